"""The suites: one module each, `CASES` (name -> a function of a `Context` returning rows), and
optionally `add_arguments(parser)` for the suite's own options and `DEFAULT_TREE`."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Run, Tree, run_graft, run_module, start_graft

SUITES = (
    "accuracy", "levers", "speed", "memory", "budget", "pairs", "tasks", "anchors", "gpu", "serve", "pick",
)  # fmt: skip


@dataclass
class Context:
    """What a case gets: the tree to measure, the parsed options, a scratch folder of its own."""

    tree: Tree
    options: argparse.Namespace
    work: Path

    def graft(self, *args: str, cache: Path | None = None, cwd: Path | None = None) -> Run:
        return run_graft(self.tree, list(args), cache=cache, cwd=cwd)

    def start(self, *args: str, cache: Path, log: Path) -> subprocess.Popen:
        """A long-running graft process of the tree (a server), cold cache `cache`."""
        return start_graft(self.tree, list(args), cache, log)

    def module(self, module: str, *args: str, cache: Path | None = None) -> Run:
        return run_module(self.tree, module, list(args), cache=cache)

    @property
    def extra(self) -> list[str]:
        """Arguments after `--` on the command line, for a script case."""
        return list(getattr(self.options, "extra", []) or [])


Case = Callable[[Context], list[dict[str, Any]]]


def script_case(module: str, *default_args: str) -> Case:
    """A case that runs a script module from the tree: its emitted rows, each with the wall time
    and peak RSS of the whole script (one row of those when it emits none)."""

    def case(ctx: Context) -> list[dict[str, Any]]:
        run = ctx.module(module, *(ctx.extra or default_args))
        failed = {"error": f"{module} exited {run.returncode}"} if run.returncode else {}
        rows = run.rows or [failed]
        return [{**row, **run.measures(script_rc=run.returncode)} for row in rows]

    case.__doc__ = f"python -m {module} {' '.join(default_args)}".strip()
    case.module = module  # type: ignore[attr-defined]  # the script that takes the options after `--`
    return case


WORK = ROOT / ".cache" / "bench"
