"""Sentence pairs: graft's pair encodings against the packaged encoder's zero-shot cosine, one
`graft train` process per row with a cold cache of its own.

    python -m bench pairs [--only sick-500 sick snli-3k snli] [--zero-shot]
    python -m bench pairs --only sick-500 --tree "cross=.:--pair-encoding cross"

- sick-500: SICK's first 500 training pairs, relatedness 1-5 (`--task regression`), SICK's test set;
- sick: all 4,934 SICK training pairs, the same test set;
- snli-3k: the levers suite's 3,000 SNLI pairs (2,000 test pairs), 3 classes, the defaults;
- snli: all 9,842 SNLI training pairs and its 9,824 test pairs, `--strategy finetune --epochs 1`.

Each regression row has the zero-shot baseline beside it: all-MiniLM-L6-v2 untrained, each
sentence mean-pooled and L2-normalised, the cosine of the two (fp32), scored on the same test set.
A row: test Spearman or accuracy, the encoding kept, seconds (`--zero-shot`: the baseline too).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path
from typing import Any

from bench.data import BENCH, TEXT, table_sample
from bench.suites import Context

WORK = BENCH / "wise_ft"
PAIR = ["--text-column", "sentence1,sentence2", "--label-column", "score", "--task", "regression"]


def _first_rows(source: Path, target: Path, n: int) -> Path:
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        target.write_text("".join(lines[: n + 1]))
    return target


def datasets() -> dict[str, list[str]]:
    sick = TEXT / "sick"
    snli3k = table_sample(TEXT / "snli" / "train.csv", WORK / "snli-3k" / "train.csv", 3000)
    snli3k_test = table_sample(TEXT / "snli" / "test.csv", WORK / "snli-3k" / "test.csv", 2000)
    return {
        "sick-500": [str(_first_rows(sick / "train.csv", WORK / "sick-500" / "train.csv", 500)),
                     "--test", str(sick / "test.csv"), *PAIR],
        "sick": [str(sick / "train.csv"), "--test", str(sick / "test.csv"), *PAIR],
        "snli-3k": [str(snli3k), "--test", str(snli3k_test), "--text-column", "premise,hypothesis"],
        "snli": [str(TEXT / "snli" / "train.csv"), "--test", str(TEXT / "snli" / "test.csv"),
                 "--text-column", "premise,hypothesis", "--strategy", "finetune", "--epochs", "1"],
    }  # fmt: skip


def zero_shot(test: Path) -> float:
    """The packaged MiniLM, untrained: test Spearman of the cosine of the two sentences."""
    import torch
    from scipy.stats import spearmanr

    from graft.backbones import create_backbone
    from graft.modalities.text import Padding, tokenize

    with open(test, newline="") as f:
        rows = list(csv.DictReader(f))
    minilm = create_backbone("minilm")
    texts = [t for r in rows for t in (r["sentence1"], r["sentence2"])]
    ids = tokenize(minilm.tokenizer, texts, 128)
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(ids), 256):
            pooled.append(minilm.body.embed(Padding(0, 128)(ids[start : start + 256], torch.device("cpu"))))
    u = torch.cat(pooled)
    cosine = torch.nn.functional.cosine_similarity(u[0::2], u[1::2]).numpy()
    return float(spearmanr(cosine, [float(r["score"]) for r in rows]).statistic)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--zero-shot", action="store_true", help="also score the untrained cosine")


def _pair(ctx: Context, name: str) -> list[dict[str, Any]]:
    argv = datasets()[name]
    out, cache = ctx.work / "run", ctx.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    run = ctx.graft("train", *argv, "--out", str(out), "--overwrite", "--json", cache=cache).check()
    report = run.report or {}
    key = "spearman" if (report.get("task") or {}).get("name") == "regression" else "accuracy"
    notes = [n for n in report["plan"]["notes"] if n.startswith("pair encoding auto")]
    row = {"metric": key, "test": report["test"][key], "val": report["validation"][key],
           "encoding": report["preprocessing"].get("pair_encoding", "cross"), "strategy": report["strategy"],
           "precision": report["plan"]["precision"], "choice": notes[0] if notes else None}  # fmt: skip
    if ctx.options.zero_shot and key == "spearman":
        row["zero_shot_test"] = zero_shot(Path(argv[2]))
    return [{**row, **run.measures()}]


def _case(name: str) -> Any:
    def case(ctx: Context) -> list[dict[str, Any]]:
        return _pair(ctx, name)

    case.__doc__ = f"graft train on {name}: the test metric and the encoding kept"
    return case


CASES = {name: _case(name) for name in ("sick-500", "sick", "snli-3k", "snli")}
