"""The shape of training, kept by reading the source (`ast`): a `Job` is read-only (its recipes
return an `Outcome` that the runner applies), several processes agree only at named decision
points, the recipes module only dispatches, and only the `Clock` reads --time-budget."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import graft
from graft.training.job import Job

SRC = Path(graft.__file__).resolve().parent
JOB_NAME = re.compile(r"(^|_)job$")

# where processes (--devices N) agree, each a function whose name says it decides; `from_main`
# (rank 0's value for every process) is called nowhere else
DECISIONS = {
    "runner.py:decide_encoding",
    "runner.py:decide_run_dir",
    "training/budget.py:Clock.decide_left",
    "training/budget.py:Clock.decide_schedule",
    "training/budget.py:Clock.decide_affords",
    "training/subset.py:decide_room",
    "training/subset.py:decide_seconds_per_input",
    "training/subset.py:decide_chunk",
    "training/probe.py:decide_feature_layers",
    "training/keep.py:decide_challenger",
    "training/auto.py:decide_epoch_seconds",
}
# not a decision: every process waits there while rank 0 decodes the images
BARRIERS = {"modalities/image.py:ImageModality.training_set"}


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text()) for p in sorted(SRC.rglob("*.py"))}


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    """Every function with its qualified name (Class.method, outer.inner)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((prefix + node.name, node))
            found += _functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, prefix + node.name + ".")
        else:
            found += _functions(node, prefix)
    return found


def _innermost(tree: ast.Module) -> dict[int, str]:
    """Each node's (by id) innermost enclosing function's qualified name."""
    owner: dict[int, str] = {}
    for name, function in sorted(_functions(tree), key=lambda f: f[1].lineno):  # outer first
        for node in ast.walk(function):
            owner[id(node)] = name
    return owner


def _job_names(function: ast.AST) -> set[str]:
    """Parameters typed `Job` (whatever they are called)."""
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return {a.arg for a in every if a.annotation is not None and ast.unparse(a.annotation) == "Job"}


def _chain(target: ast.Attribute) -> list[str]:
    """The names an attribute target goes through before its last one: job.model.head -> [job, model]."""
    names, node = [], target.value
    while isinstance(node, ast.Attribute):
        names.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.insert(0, node.id)
    return names


def _assigned_on_a_job(tree: ast.Module) -> list[int]:
    lines = []
    typed = {name: _job_names(f) for name, f in _functions(tree)}
    owner = _innermost(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for part in ast.walk(target):
                if not isinstance(part, ast.Attribute) or not isinstance(part.ctx, ast.Store):
                    continue
                jobs = typed.get(owner.get(id(node), ""), set())
                if any(JOB_NAME.search(n) or n in jobs for n in _chain(part)):
                    lines.append(node.lineno)
    return lines


def test_a_job_is_read_only_and_nothing_assigns_onto_one():
    """Recipes pass state by returning it (`Outcome`, applied by the runner with `Job.after`),
    never by writing onto the shared job: job.plan = ..., job.model.head = ..., and the like."""
    assert Job.__dataclass_params__.frozen
    assert {"plan", "task", "prep", "model", "splits"} <= {f.name for f in dataclasses.fields(Job)}
    found = {
        f"{name}:{line}"
        for name, tree in _sources().items()
        if name != "runner.py"
        for line in _assigned_on_a_job(tree)
    }
    assert found == set()


def test_processes_agree_only_at_the_named_decisions():
    """`from_main` only in DECISIONS (and the one barrier), each named for what it decides."""
    calls = set()
    for name, tree in _sources().items():
        if name.startswith("distributed"):
            continue  # where from_main is defined
        owner = _innermost(tree)
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == "from_main":
                calls.add(f"{name}:{owner.get(id(node), '<module>')}")
    assert calls <= DECISIONS | BARRIERS, sorted(calls - DECISIONS - BARRIERS)
    assert calls >= DECISIONS, sorted(DECISIONS - calls)  # the list stays true
    assert all(d.split(":")[1].split(".")[-1].startswith("decide_") for d in DECISIONS)


def test_the_recipes_module_only_dispatches():
    recipes = SRC / "training" / "recipes.py"
    assert len(recipes.read_text().splitlines()) <= 150
    tree = ast.parse(recipes.read_text())
    defined = [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    assert defined == ["train"]  # the recipes themselves live in their own modules


def test_only_the_clock_reads_the_time_budget():
    """The runner builds one `Clock` (`Clock.start`); every plan against the budget asks it, and
    graft compare reads a config's budget through it too (`Clock.budget_of`)."""
    readers = set()
    for name, tree in _sources().items():
        owner = _innermost(tree)
        for node in ast.walk(tree):
            reads = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
            if reads and node.attr == "time_budget":
                readers.add(f"{name}:{owner.get(id(node), '<module>')}")
    clock = "training/budget.py:Clock.budget_of"
    assert {r for r in readers if not r.startswith("runner.py:")} == {clock}
