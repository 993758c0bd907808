"""`python -m bench SUITE [--only CASE ...] [--tree [NAME=]REV_OR_PATH[:FLAGS] ...] [--table]`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import results
from bench.harness import ROOT, open_tree
from bench.suites import SUITES, WORK, Context


def load_suite(name: str) -> ModuleType:
    return importlib.import_module(f"bench.suites.{name}")


def parser_for(suite: ModuleType | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--only", nargs="+", metavar="CASE", help="these cases (default: all)")
    parser.add_argument("--tree", action="append", metavar="[NAME=]REV_OR_PATH[:FLAGS]",
                        help="a checkout, its src/, a git revision or `installed`; repeat to compare "
                        "(default: this checkout)")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print the table from bench/results and stop")
    parser.add_argument("--list", action="store_true", help="list the suite's cases and stop")
    parser.add_argument("--results", type=Path, default=results.RESULTS, help="where the JSON lines go")
    if suite is not None and hasattr(suite, "add_arguments"):
        suite.add_arguments(parser.add_argument_group(f"{suite.__name__.rsplit('.', 1)[1]} options"))
    return parser


def parse(argv: list[str]) -> tuple[ModuleType, argparse.Namespace]:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    name = next((a for a in argv if a in SUITES), None)
    suite = load_suite(name) if name else None
    options = parser_for(suite).parse_args(argv)
    options.extra = extra
    return suite or load_suite(options.suite), options


def run_case(
    suite: str, case: str, fn: Any, ctx: Context, before: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One case's rows, stamped; `before` is the machine's load before the suite's first case."""
    seen = {"machine": results.machine(), "date": results.now()}
    start = results.load()
    try:
        rows = fn(ctx)
    except Exception as error:  # one failed case is a row that says so; the others still run
        traceback.print_exc()
        rows = [{"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}]
    seen["busy"] = results.busy(start, results.load(), before)
    return [results.stamp(row, suite, case, ctx.tree, seen) for row in rows]


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the harness, which stops the graft it waits for


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    suite, options = parse(sys.argv[1:] if argv is None else argv)
    cases = suite.CASES
    default = list(getattr(suite, "DEFAULT_CASES", cases))  # a long measurement runs only when named
    if options.list:
        for name, fn in cases.items():
            named = "" if name in default else " (only when named)"
            first_line = (fn.__doc__ or "").strip().partition("\n")[0]
            print(f"{name}{named}: {first_line}")
        return 0
    if options.table:
        print(results.table(results.read(options.suite, options.results)))
        return 0
    unknown = sorted(set(options.only or []) - set(cases))
    if unknown:
        raise SystemExit(f"{options.suite} has no case {', '.join(unknown)}; its cases: {', '.join(cases)}")
    before = results.load()  # later, the load average counts this suite's own earlier cases
    for spec in options.tree or [getattr(suite, "DEFAULT_TREE", f"here={ROOT}")]:
        with open_tree(spec) as tree:
            for name in options.only or default:
                work = WORK / options.suite / tree.name / name
                work.mkdir(parents=True, exist_ok=True)
                rows = run_case(options.suite, name, cases[name], Context(tree, options, work), before)
                path = results.append(options.suite, rows, options.results)
                print(f"{options.suite}/{name} [{tree.name} {tree.commit}]: {len(rows)} row(s) -> {path}")
    print(results.table(results.read(options.suite, options.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
