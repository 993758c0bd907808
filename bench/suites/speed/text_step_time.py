"""Seconds per MiniLM fine-tuning step with the top N layer groups training (`--train-groups N`).

    python -m bench speed --only text_step_time -- [--groups all 4 3] [--batch 32 --tokens 14]
        [--steps 8 --rounds 3]

One step is graft's own: `recipes.time_steps` runs forward, backward and the AdamW step through
the training loop on real batches (TREC-6 training questions, `--batch` of them, cut or chosen to
`--tokens` tokens each, [CLS] and [SEP] included) and returns the median gap between step ends
(the first step's one-off set-up left out). The groups below the top N are frozen the way the
runner freezes them (`Backbone.freeze_below`, plus the token embeddings that classification
fine-tuning always keeps frozen), so they cost no backward pass. The settings are timed in
--rounds interleaved rounds and each reports the median of its rounds: on a shared machine a
load change then moves every setting alike.
"""

from __future__ import annotations

import argparse
import csv
import statistics

import torch

from bench.data import TEXT
from bench.harness import emit
from graft.backbones import create_backbone
from graft.heads import GraftModel, HeadSpec, build_head
from graft.modalities import get_modality
from graft.training.loop import LoopConfig
from graft.training.strategies import HEAD


def _time_steps() -> object:
    """graft's step timer, wherever this tree keeps it (the recipes module split in two)."""
    import importlib

    for name in ("graft.training.timing", "graft.training.recipes"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "time_steps"):
            return module.time_steps
    raise ImportError("this graft has no time_steps in graft.training.timing or graft.training.recipes")
TREC6 = TEXT / "trec6" / "train.csv"


def batch_of_questions(tokenizer, n: int, tokens: int) -> torch.Tensor:
    """`n` TREC-6 training questions as token ids of exactly `tokens` tokens: those that are at least
    that long, cut to it (keeping [SEP] last)."""
    with open(TREC6, newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    ids = [i for i in tokenizer(texts)["input_ids"] if len(i) >= tokens][:n]
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} TREC-6 questions have {tokens} tokens or more")
    return torch.tensor([i[: tokens - 1] + [i[-1]] for i in ids])


def seconds_per_step(backbone, head, x, y, train_top: int | None, steps: int) -> float:
    body = backbone.body
    for p in body.parameters():
        p.requires_grad_(True)
    backbone.freeze_below(train_top, also=get_modality("text").extra_frozen(backbone))
    model = GraftModel(body, head)
    groups = [*backbone.trainable_groups(), (HEAD, list(head.parameters()))]
    return _time_steps()(model, groups, [(x, y)] * (steps + 1), LoopConfig(epochs=1, lr=1e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", nargs="+", default=["all", "4", "3"], help="top N groups, or all")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=14)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = create_backbone("minilm")
    head = build_head(HeadSpec(), backbone.num_features, 6)
    x = batch_of_questions(backbone.tokenizer, args.batch, args.tokens)
    y = torch.randint(0, 6, (args.batch,))
    settings = {g: None if g == "all" else int(g) for g in args.groups}
    timed: dict[str, list[float]] = {g: [] for g in settings}
    for _ in range(args.rounds):
        for name, top in settings.items():
            timed[name].append(seconds_per_step(backbone, head, x, y, top, args.steps))
    median = {name: statistics.median(v) for name, v in timed.items()}
    first = next(iter(median.values()))
    print(f"threads {torch.get_num_threads()}; MiniLM, {args.batch} questions of {args.tokens} tokens")
    print("| layer groups training | s per step (median) | speed-up |")
    print("| --- | --- | --- |")
    for name, seconds in median.items():
        label = f"all {len(backbone.groups)}" if name == "all" else f"top {name}"
        print(f"| {label} | {seconds:.3f} | {first / seconds:.2f}x |")
        emit({"row": label, "seconds_per_step": seconds, "speed_up": first / seconds, "rounds": timed[name],
              "threads": torch.get_num_threads(), "batch": args.batch, "tokens": args.tokens})  # fmt: skip


if __name__ == "__main__":
    main()
