"""Sentence pairs: graft's pair encodings against the packaged encoder's zero-shot cosine, one
`graft train` process per row with a cold cache of its own.

    python bench/pairs.py [--only sick-500 sick snli-3k snli] [--flags "--pair-encoding cross"]

- sick-500: SICK's first 500 training pairs, relatedness 1-5 (`--task regression`), SICK's test set;
- sick: all 4,934 SICK training pairs, the same test set;
- snli-3k: bench/wise_ft.py's 3,000 SNLI pairs (2,000 test pairs), 3 classes, the defaults;
- snli: all 9,842 SNLI training pairs and its 9,824 test pairs, `--strategy finetune --epochs 1`.

Each regression row has the zero-shot baseline beside it: all-MiniLM-L6-v2 untrained, each
sentence mean-pooled and L2-normalised, the cosine of the two (fp32), scored on the same test set.
Prints one JSON line per run (test Spearman or accuracy, the encoding kept, seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wise_ft import TEXT, WORK, _table_sample  # noqa: E402  (the shared data and samples)

SRC = Path(__file__).resolve().parents[1] / "src"
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
    snli3k = _table_sample(TEXT / "snli" / "train.csv", WORK / "snli-3k" / "train.csv", 3000)
    snli3k_test = _table_sample(TEXT / "snli" / "test.csv", WORK / "snli-3k" / "test.csv", 2000)
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


def run(name: str, argv: list[str], flags: list[str]) -> dict:
    out = WORK.parent / "pairs" / name
    cache = WORK.parent / "pairs" / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    env = {"PYTHONPATH": str(SRC), "GRAFT_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "graft", "train", *argv, *flags, "--out", str(out), "--overwrite", "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    key = "spearman" if (report.get("task") or {}).get("name") == "regression" else "accuracy"
    notes = [n for n in report["plan"]["notes"] if n.startswith("pair encoding auto")]
    return {
        "dataset": name,
        "flags": shlex.join(flags),
        "metric": key,
        "test": report["test"][key],
        "val": report["validation"][key],
        "encoding": report["preprocessing"].get("pair_encoding", "cross"),
        "strategy": report["strategy"],
        "seconds": round(seconds, 1),
        "precision": report["plan"]["precision"],
        "choice": notes[0] if notes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["sick-500", "sick", "snli-3k"])
    parser.add_argument("--flags", default="", help="added to every graft train")
    parser.add_argument("--zero-shot", action="store_true", help="also score the untrained cosine")
    args = parser.parse_args()
    sets = datasets()
    for name in args.only:
        row = run(name, sets[name], shlex.split(args.flags))
        if args.zero_shot and row["metric"] == "spearman":
            row["zero_shot_test"] = zero_shot(Path(sets[name][2]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
