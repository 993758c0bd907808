"""Issue 27's levers side by side: one `graft train` process per dataset and variant, each with a
cold cache of its own, on bench/wise_ft.py's image and text datasets. A variant is a source tree
and the flags it adds, so "today" is a worktree of the commit before a lever and a lever is either
a flag or a tree with a changed default.

    git worktree add /tmp/today <commit before the levers>
    python bench/levers27.py --variant "today=/tmp/today/src" \\
        --variant "smoothing=/tmp/today/src:--label-smoothing 0.1" [--only trec6 catdog ...]

Prints one JSON line per run as it ends, then a table per dataset and the average change of each
variant against the first (test metric points, wall-time ratio); results go to
.cache/bench/levers27/<--name>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wise_ft import WORK, _run, datasets  # noqa: E402  (the datasets and the one-process runner)

OUT = WORK.parent / "levers27"


def _variant(spec: str) -> tuple[str, Path, list[str]]:
    name, _, rest = spec.partition("=")
    src, _, flags = rest.partition(":")
    return name, Path(src), shlex.split(flags)


def _summary(rows: list[dict], names: list[str]) -> None:
    by = {(r["dataset"], r["variant"]): r for r in rows}
    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    print("| dataset | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for d in sets:
        cells = [by.get((d, n)) for n in names]
        shown = [
            f"{c['test']:.4f}, {c['seconds']:.0f} s ({c['strategy']}, {c['epochs']} ep)" if c else ""
            for c in cells
        ]
        print(f"| {d} | " + " | ".join(shown) + " |")
    base = names[0]
    for n in names[1:]:
        pairs = [(by[(d, base)], by[(d, n)]) for d in sets if (d, base) in by and (d, n) in by]
        if pairs:
            gain = 100 * sum(b["test"] - a["test"] for a, b in pairs) / len(pairs)
            ratio = sum(b["seconds"] for _, b in pairs) / sum(a["seconds"] for a, _ in pairs)
            print(
                f"{n} against {base}: {gain:+.2f} points on average over {len(pairs)} sets, "
                f"{ratio:.2f}x the wall time"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=SRC[:FLAGS]")
    parser.add_argument("--only", nargs="*", default=list(datasets()))
    parser.add_argument("--name", default="results", help="the results file's name")
    args = parser.parse_args()
    variants = [_variant(v) for v in args.variant]
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.only:
        argv = datasets()[dataset]()
        for name, src, extra in variants:
            result = _run(src, [*argv, *extra], OUT / "runs" / dataset / name)
            row = {"dataset": dataset, "variant": name, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (OUT / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
    _summary(rows, [v[0] for v in variants])


if __name__ == "__main__":
    main()
