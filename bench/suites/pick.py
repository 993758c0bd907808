"""Does `--backbone auto` earn its place? Issue 38's three targets, each a case:

    python -m bench pick [--only side_by_side time_to_pick ranking] [--budget 120] [--sets ...]

- side_by_side: per set, `graft train SET --test TEST --time-budget 120` with the default backbone
  (EfficientNet-Lite0) and with `--backbone auto`: test accuracy, its binomial standard error,
  wall seconds (process start to exit), the backbone chosen; then a summary row (mean difference
  in points, the sets where auto is lower by more than one standard error). Target: +1 point on
  average, no set lower by more than one SE.
- time_to_pick: on 1,000 CIFAR-10 images (100 a class), `graft pick` of the three offline
  candidates against one Lite0 linear probe (`graft train --strategy linear`), each from a cold
  cache, wall including process start. Target: the pick at most 1.5x the probe.
- ranking: per set, `graft pick`'s ranking of the three offline candidates against a full-data
  linear probe's (`graft train --backbone B --strategy linear`, test accuracy): Kendall's tau
  (target >= 0.6 averaged over the sets), and whether the full-data winner is chosen or the
  chosen one is within one standard error of it; `full_spread_se`, the full-data accuracies'
  spread in standard errors, says whether there is a ranking to agree with (under ~1: noise).

The sets (only CIFAR-10 is local, so they differ by classes and size; the test images are the
same classes' first --test-per-class of the CIFAR-10 test split):
- animals-100: bird, cat, deer, dog, frog, horse; 100 training images a class (fine-grained-ish);
- vehicles-50: airplane, automobile, ship, truck; 50 a class (small data);
- cifar10-300: all ten classes, 300 a class.
`--per-class N` replaces every set's training size (a smoke run: `--per-class 10 --budget 30`).
Needs the data: see bench/README.md (GRAFT_BENCH_CIFAR points elsewhere).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from bench.data import BENCH, DATA, IMAGE_EXTENSIONS, require_data
from bench.suites import Context

CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")
ALL = (*VEHICLES[:2], *ANIMALS, *VEHICLES[2:])
SETS: dict[str, tuple[tuple[str, ...], int]] = {
    "animals-100": (ANIMALS, 100),
    "vehicles-50": (VEHICLES, 50),
    "cifar10-300": (ALL, 300),
}


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--budget", type=float, default=120, help="side_by_side's --time-budget (s)")
    group.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    group.add_argument("--per-class", type=int, default=None, help="every set's training images a class")
    group.add_argument("--test-per-class", type=int, default=200)
    group.add_argument("--pick-images", type=int, default=1000, help="time_to_pick's images (all classes)")


def class_folder(split: str, classes: tuple[str, ...], per_class: int, name: str) -> Path:
    """The first `per_class` images (sorted names) of each of `classes` in CIFAR-10's `split`, as a
    folder of symlinks under .cache/bench/pick/<name> (built once)."""
    require_data(DATA / split)
    folder = BENCH / "pick" / name
    for cls in classes:
        target = folder / cls
        target.mkdir(parents=True, exist_ok=True)
        images = sorted(p for p in (DATA / split / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for src in images[:per_class]:
            if not (target / src.name).is_symlink():
                os.symlink(src.resolve(), target / src.name)
    return folder


def _set(ctx: Context, name: str) -> tuple[Path, Path]:
    classes, per_class = SETS[name]
    per_class = ctx.options.per_class or per_class
    train = class_folder("train", classes, per_class, f"{name}-train-{per_class}")
    n_test = ctx.options.test_per_class
    test = class_folder("test", classes, n_test, f"{name}-test-{n_test}")
    return train, test


def _se(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0


def _trained(ctx: Context, train: Path, test: Path, out: Path, *flags: str) -> dict[str, Any]:
    argv = ["train", str(train), "--test", str(test), "--out", str(out), "--overwrite", "--json", *flags]
    run = ctx.graft(*argv).check()
    report = run.report or {}
    accuracy, n = float(report["test"]["accuracy"]), int(report["test"]["n"])
    pick = report.get("backbone_pick") or {}
    return {
        "accuracy": round(accuracy, 4),
        "se": round(_se(accuracy, n), 4),
        "n_test": n,
        "seconds": round(run.wall_s, 1),
        "backbone": report["backbone"]["name"],
        "strategy": report["strategy"],
        "pick_seconds": pick.get("seconds"),
        "pick_per_class": pick.get("per_class"),
    }


def side_by_side(ctx: Context) -> list[dict[str, Any]]:
    """--backbone auto against the default under --time-budget: accuracy, SE, seconds, chosen."""
    rows, budget = [], ["--time-budget", str(ctx.options.budget)]
    for name in ctx.options.sets:
        train, test = _set(ctx, name)
        default = _trained(ctx, train, test, ctx.work / f"{name}-default", *budget)
        auto = _trained(ctx, train, test, ctx.work / f"{name}-auto", *budget, "--backbone", "auto")
        rows += [{"row": f"{name}/default", **default}, {"row": f"{name}/auto", **auto}]
    return rows + [_side_by_side_summary(rows)]


def _side_by_side_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_set: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        name, arm = row["row"].split("/")
        by_set.setdefault(name, {})[arm] = row
    gains = {n: 100 * (a["auto"]["accuracy"] - a["default"]["accuracy"]) for n, a in by_set.items()}
    lower = [
        n for n, a in by_set.items() if a["auto"]["accuracy"] < a["default"]["accuracy"] - a["default"]["se"]
    ]
    mean = sum(gains.values()) / max(1, len(gains))
    return {
        "row": "summary",
        "gain_points": {n: round(g, 2) for n, g in gains.items()},
        "mean_gain_points": round(mean, 2),
        "lower_by_over_one_se": lower,
        "target_met": mean >= 1.0 and not lower,
    }


def time_to_pick(ctx: Context) -> list[dict[str, Any]]:
    """graft pick of the three offline candidates against one Lite0 linear probe, cold caches."""
    per_class = max(1, ctx.options.pick_images // len(ALL))
    data = class_folder("train", ALL, per_class, f"pick-{per_class * len(ALL)}")
    pick = ctx.graft("pick", str(data), "--candidates", ",".join(CANDIDATES), "--json").check()
    out = ctx.work / "probe"
    probe = ctx.graft("train", str(data), "--strategy", "linear", "--out", str(out), "--overwrite", "--json")
    probe.check()
    chosen = pick.last_json()
    return [
        {
            "images": per_class * len(ALL),
            "pick_s": round(pick.wall_s, 1),
            "probe_s": round(probe.wall_s, 1),
            "ratio": round(pick.wall_s / probe.wall_s, 2),
            "target_met": pick.wall_s <= 1.5 * probe.wall_s,
            "chosen": chosen.get("chosen"),
            "per_class": chosen.get("per_class"),
        }
    ]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two scorings of the same items (ties count for neither side)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    concordant = sum(1 for i, j in pairs if (a[i] - a[j]) * (b[i] - b[j]) > 0)
    discordant = sum(1 for i, j in pairs if (a[i] - a[j]) * (b[i] - b[j]) < 0)
    ties_a = sum(1 for i, j in pairs if a[i] == a[j])
    ties_b = sum(1 for i, j in pairs if b[i] == b[j])
    denominator = math.sqrt((len(pairs) - ties_a) * (len(pairs) - ties_b))
    return (concordant - discordant) / denominator if denominator else 0.0


def ranking(ctx: Context) -> list[dict[str, Any]]:
    """graft pick's ranking against full-data linear probes' (test accuracy): Kendall's tau."""
    rows = []
    for name in ctx.options.sets:
        train, test = _set(ctx, name)
        picked = ctx.graft("pick", str(train), "--candidates", ",".join(CANDIDATES), "--json").check()
        rows.append(_agreement(ctx, name, train, test, picked.last_json()))
    taus = [r["kendall_tau"] for r in rows]
    return rows + [{"row": "summary", "mean_kendall_tau": round(sum(taus) / max(1, len(taus)), 3)}]


def _agreement(ctx: Context, name: str, train: Path, test: Path, picked: dict[str, Any]) -> dict[str, Any]:
    scores = {r["backbone"]: r["score"] for r in picked["candidates"]}
    full = {
        b: _trained(ctx, train, test, ctx.work / f"{name}-{b}", "--backbone", b, "--strategy", "linear")
        for b in CANDIDATES
    }
    scored = [b for b in CANDIDATES if scores.get(b) is not None]
    accuracy = {b: full[b]["accuracy"] for b in CANDIDATES}
    winner, chosen = max(CANDIDATES, key=accuracy.__getitem__), picked["chosen"]
    return {
        "row": name,
        "pick_scores": scores,
        "full_accuracy": accuracy,
        "kendall_tau": round(kendall_tau([scores[b] for b in scored], [accuracy[b] for b in scored]), 3),
        "chosen": chosen,
        "full_winner": winner,
        "chosen_within_one_se": accuracy[chosen] >= accuracy[winner] - full[winner]["se"],
        # the full-data accuracies' spread in standard errors: under ~1, their ranking is itself noise
        "full_spread_se": _in_se(max(accuracy.values()) - min(accuracy.values()), full[winner]["se"]),
        "pick_per_class": picked.get("per_class"),
        "pick_s": round(picked["seconds"], 1),
    }


def _in_se(difference: float, se: float) -> float | None:
    return round(difference / se, 2) if se > 0 else None  # a perfect score has no binomial error


CASES = {"side_by_side": side_by_side, "time_to_pick": time_to_pick, "ranking": ranking}
