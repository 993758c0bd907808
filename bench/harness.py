"""Start graft from a source tree, the one way every suite does it.

A tree is a folder (a checkout or its `src/`), a git revision (checked out here as a temporary
`git worktree` and removed afterwards) or `installed` (whatever graft the interpreter imports: a
wheel). `NAME=REV_OR_PATH[:FLAGS]` names it and gives flags every `graft` call of that tree gets.
Each run is a fresh process with a cold cache (a new GRAFT_CACHE_DIR), timed from outside: wall
seconds, peak RSS of the process and its reaped children (`os.wait4`), its report.json.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS_ENV = "GRAFT_BENCH_ROWS"  # a moved script appends its rows (JSON lines) to this file
FLAGS_ENV = "GRAFT_BENCH_FLAGS"  # the tree's extra graft flags, for scripts that start graft themselves


@dataclass(frozen=True)
class Tree:
    """A graft source tree: `src` goes first on PYTHONPATH (None: the installed graft)."""

    name: str
    src: Path | None
    commit: str
    flags: tuple[str, ...] = ()


@dataclass
class Run:
    """One finished process: what it printed, how long it took, its peak memory and report.json."""

    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stdout: str = ""
    stderr: str = ""
    report: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def last_json(self) -> dict[str, Any]:
        """The last stdout line as JSON (`graft ... --json` prints its summary there)."""
        lines = self.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    def measures(self, **extra: Any) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 2), "peak_rss_mb": round(self.peak_rss_mb, 1), **extra}

    def check(self) -> Run:
        if self.returncode:
            raise RuntimeError(f"{shlex.join(self.argv)} exited {self.returncode}:\n{self.stderr[-3000:]}")
        return self


def parse_tree_spec(spec: str) -> tuple[str, str, tuple[str, ...]]:
    """`NAME=REV_OR_PATH[:FLAGS]` or `REV_OR_PATH` -> (name, where, flags)."""
    name, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    where, _, flags = rest.partition(":")
    return name or where, where, tuple(shlex.split(flags))


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def commit_of(folder: Path) -> str:
    """The checkout's commit, `+dirty` when it has uncommitted changes (other than the rows the
    harness itself writes, bench/results/); `unknown` outside git."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD", cwd=folder)
        rows = ":(top,exclude)bench/results"
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ":/", rows, cwd=folder)
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _src_of(folder: Path) -> Path:
    if (folder / "src" / "graft").is_dir():
        return folder / "src"
    if (folder / "graft").is_dir():
        return folder
    raise SystemExit(f"--tree {folder}: no graft package in it or its src/; give a checkout or its src/")


def _installed_commit() -> str:
    """The installed graft's version, and its checkout's commit when it is installed from one."""
    code = "import graft, os; print(graft.__version__); print(os.path.dirname(graft.__file__))"
    env = tree_env(Tree("installed", None, ""), Path(tempfile.gettempdir()))  # as its processes run
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())  # fmt: skip
    if done.returncode:
        return "installed graft (not importable)"
    version, folder = done.stdout.split()[:2]
    commit = commit_of(Path(folder))
    return f"installed {version}" + ("" if commit == "unknown" else f" from {commit}")


@contextmanager
def open_tree(spec: str) -> Iterator[Tree]:
    """The tree `spec` names; a git revision is checked out as a worktree and removed on exit."""
    name, where, flags = parse_tree_spec(spec)
    if where == "installed":
        yield Tree(name, None, _installed_commit(), flags)
        return
    folder = Path(where).expanduser()
    if folder.is_dir():
        src = _src_of(folder.resolve())
        yield Tree(name, src, commit_of(src), flags)
        return
    checkout = Path(tempfile.mkdtemp(prefix="graft-tree-")) / "tree"
    _git("worktree", "add", "--detach", str(checkout), where)
    try:
        yield Tree(name, checkout / "src", commit_of(checkout), flags)
    finally:
        _git("worktree", "remove", "--force", str(checkout))
        checkout.parent.rmdir()


def tree_env(tree: Tree, cache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process of `tree`: its src (and this repo, for `bench`) on PYTHONPATH,
    then the caller's PYTHONPATH (where a wheel was installed with `pip install --target`)."""
    paths = [str(tree.src)] if tree.src is not None else []
    paths += [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, GRAFT_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join(paths))
    env[FLAGS_ENV] = shlex.join(tree.flags)  # ROOT holds no graft package: it shadows nothing
    return env | (extra or {})


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None, capture: bool = True) -> Run:
    """Run argv to the end: wall seconds, peak RSS (the process and its reaped children), output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out if capture else None,
                                   stderr=err if capture else None)  # fmt: skip
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C or a timeout's signal: leave no graft running behind
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return Run(argv, process.returncode, wall, usage.ru_maxrss / 1024, out.read(), err.read())


def run_graft(tree: Tree, args: list[str], cache: Path | None = None, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Run:  # fmt: skip
    """`python -m graft ARGS` from `tree` (plus its flags for train), with a cold cache unless
    `cache` is given; report.json is read from `--out` when the run wrote one."""
    return _graft(args, list(tree.flags), lambda folder: tree_env(tree, folder, env), cache, cwd)


def graft_here(args: list[str], cache: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """`run_graft` from inside a case's script (`run_module` started it in the tree's environment,
    so the tree is this process's PYTHONPATH and its flags are in GRAFT_BENCH_FLAGS)."""
    def env_of(folder: Path) -> dict[str, str]:
        return dict(os.environ, GRAFT_CACHE_DIR=str(folder)) | (env or {})

    return _graft(args, tree_flags(), env_of, cache, None)


def _graft(args: list[str], flags: list[str], env_of: Any, cache: Path | None, cwd: Path | None) -> Run:
    argv = [sys.executable, "-m", "graft", *args, *(flags if args and args[0] == "train" else [])]
    with tempfile.TemporaryDirectory(prefix="graft-cache-") as cold:
        run = timed(argv, env_of(cache or Path(cold)), cwd)
    if "--out" in args:
        report = Path(args[args.index("--out") + 1]) / "report.json"
        run.report = json.loads(report.read_text()) if report.is_file() else None
    return run


def start_graft(tree: Tree, args: list[str], cache: Path, log: Path) -> subprocess.Popen:
    """`python -m graft ARGS` from `tree`, left running (a server); its output goes to `log`."""
    with open(log, "w") as out:
        argv = [sys.executable, "-m", "graft", *args]
        return subprocess.Popen(argv, env=tree_env(tree, cache), stdout=out, stderr=subprocess.STDOUT)


def run_module(tree: Tree, module: str, args: list[str], cache: Path | None = None) -> Run:
    """`python -m MODULE ARGS` (a case's own script) from `tree`; its output goes to the terminal,
    the rows it emits (`emit`) come back in `Run.rows`."""
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as scratch:
        rows_file = Path(scratch) / "rows.jsonl"
        env = tree_env(tree, cache or Path(scratch) / "cache", {ROWS_ENV: str(rows_file)})
        run = timed([sys.executable, "-m", module, *args], env, capture=False)
        if rows_file.is_file():
            run.rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    return run


def emit(*rows: dict[str, Any]) -> None:
    """A case's script hands its rows to the harness (printed as JSON when run by hand)."""
    target = os.environ.get(ROWS_ENV)
    lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
    if target:
        with open(target, "a") as handle:
            handle.write(lines)
    else:
        print(lines, end="", flush=True)


def tree_flags() -> list[str]:
    """The running tree's extra graft flags (for scripts that start `graft train` themselves)."""
    return shlex.split(os.environ.get(FLAGS_ENV, ""))


def graft_runtime(name: str) -> Any:
    """A function of graft's runtime (precision, device) wherever the running tree keeps it: the
    suites that time the network alone run against trees from before and after it moved."""
    import importlib

    for module in ("graft.runtime.precision", "graft.runtime.device", "graft.runtime", "graft.compute"):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(found, name):
            return getattr(found, name)
    raise ImportError(f"this graft has no {name} in graft.runtime or graft.compute")
