"""Text transfer on TREC-6 and SST-2 (../shared/data/text): `graft train` as a user runs it.

    python bench/text_transfer.py trec6                          # defaults, seeds 0 1 2
    python bench/text_transfer.py trec6 --seeds 0 --variants linear finetune gradual finetune+lm
    python bench/text_transfer.py sst2 --seeds 0 -- --time-budget 1700

Each variant is one `graft train ... --json` process; wall time includes process start, model
loading and evaluation. TREC-6 trains on train.csv (10% split off for validation) and reports
test.csv; SST-2 validates on dev.csv (the GLUE figure) and also reports test.csv. Variants:
`default` (no --strategy: auto), a strategy name, and `+lm` for one --adapt-lm epoch before it.
Results go to .cache/bench/text-<task>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "text"


def task_args(task: str) -> list[str]:
    folder = DATA / task
    if not folder.is_dir():
        sys.exit(f"{folder} is missing: the text datasets live in ../shared/data/text")
    if task == "trec6":
        return [str(folder / "train.csv"), "--test", str(folder / "test.csv")]
    return [str(folder)]  # train.csv, dev.csv (validation) and test.csv


def variant_args(variant: str) -> list[str]:
    strategy, _, lm = variant.partition("+")
    args = [] if strategy == "default" else ["--strategy", strategy]
    return args + (["--adapt-lm", "1"] if lm == "lm" else [])


def run_one(task: str, variant: str, seed: int, extra: list[str]) -> dict:
    out = ROOT / ".cache" / "runs" / f"text-{task}-{variant}-seed{seed}"
    cmd = [str(Path(sys.executable).with_name("graft")), "train", *task_args(task)]
    cmd += [*variant_args(variant), "--seed", str(seed), "--out", str(out), "--json", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    return {
        "variant": variant,
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "strategy": report["strategy"],
        "epochs": len(report["history"]),
        "val_accuracy": result["accuracy"],
        "test_accuracy": result.get("test_accuracy"),
        "max_length": report["preprocessing"]["max_length"],
        "adapt_lm_seconds": (report.get("adapt_lm") or {}).get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["trec6", "sst2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["default"])
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]  # more graft train arguments, after --
    rows = []
    print("| variant | seed | strategy | epochs | val acc | test acc | test error | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in args.variants:
        for seed in args.seeds:
            row = run_one(args.task, variant, seed, args.extra)
            rows.append(row)
            test = row["test_accuracy"]
            print(
                f"| {variant} | {seed} | {row['strategy']} | {row['epochs']} | {row['val_accuracy']:.4f} "
                f"| {test:.4f} | {100 * (1 - test):.1f}% | {row['wall_seconds']:.0f} |",
                flush=True,
            )
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        errors = [100 * (1 - r["test_accuracy"]) for r in mine]
        vals = [r["val_accuracy"] for r in mine]
        print(
            f"\n{variant}: mean test error {statistics.mean(errors):.2f}% over {len(mine)} seed(s), "
            f"mean val acc {statistics.mean(vals):.4f}, max wall {max(r['wall_seconds'] for r in mine):.0f}s"
        )
    path = ROOT / ".cache" / "bench" / f"text-{args.task}-{'-'.join(args.variants)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"extra": args.extra, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
