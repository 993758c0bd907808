"""The `graft` command line: arguments -> a frozen config -> the library. Nothing here trains."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier on images or texts")
    p.add_argument(
        "data",
        help="images: a folder (class subfolders, or train/ [val/] [test/]) or `cifar10`; texts: a "
        ".csv/.tsv/.jsonl file, a folder with train.csv [dev.csv] [test.csv], or <class>/*.txt",
    )
    p.add_argument(
        "--val", help="validation folder or file (default: val/, dev.csv, ... beside DATA, else a split)"
    )
    p.add_argument("--test", help="test folder or file, evaluated once at the end")
    p.add_argument("--data-root", help="where cifar10 is read from or downloaded to")
    p.add_argument(
        "--backbone",
        help="see `graft backbones` (default: efficientnet_lite0 for images, minilm for text)",
    )
    p.add_argument("--weights", help="local .pth/.safetensors weights for --backbone")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "linear", "finetune", "gradual"],
        help="auto (default): finetune when there are >= 20 examples per class and its default epochs "
        "(5 for images, 2 for text) fit the "
        "time budget (15 min if none), else linear; linear: frozen backbone, cached features, "
        "trained head; finetune: head first, then everything with discriminative LRs; "
        "gradual: ULMFiT gradual unfreezing",
    )
    p.add_argument(
        "--freeze-epochs",
        type=int,
        help="finetune: head-only epochs first (default 1 for images, 0 for text)",
    )
    p.add_argument("--lr-mult", type=float, default=10.0, help="head LR / earliest layer group's LR")
    p.add_argument(
        "--train-groups",
        type=int,
        metavar="N",
        help="fine-tune only the top N layer groups of the backbone (default: all); the groups below "
        "stay frozen and cost no backward pass",
    )
    p.add_argument("--augment", default="light", choices=["none", "light", "strong"])
    p.add_argument(
        "--bn",
        default="frozen",
        choices=["frozen", "trainable"],
        help="pretrained BatchNorm: keep its running statistics while scale and shift train (frozen), "
        "or use and update batch statistics (trainable)",
    )
    p.add_argument("--time-budget", help="finish within this many seconds (also 30m, 1h)")
    p.add_argument("--patience", type=int, help="stop after N epochs without a better validation accuracy")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--head", default="linear", help="linear or mlp:W1,W2 (e.g. mlp:4096,4096)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--class-weights",
        default="none",
        choices=["none", "auto"],
        help="auto: weigh the loss by inverse class frequency (imbalanced data)",
    )
    p.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument(
        "--flip-features",
        action="store_true",
        help="average each image's features with its mirror image's (2x extraction time)",
    )
    _text_options(p)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default: runs/<data>-<backbone>-<strategy>-<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="text", help="text column(s) of a table: text, or title,body")
    p.add_argument("--label-column", default="label")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls"], help="text: how token vectors pool")
    p.add_argument(
        "--max-length", type=int, help="text: tokens per text (default: 99th percentile of the data)"
    )
    p.add_argument(
        "--adapt-lm",
        type=int,
        default=0,
        metavar="N",
        help="text: N epochs of masked-LM training on the task's texts before classification (ULMFiT)",
    )
    p.add_argument("--unlabelled", help="text: more texts for --adapt-lm (a .txt, one per line, or a table)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graft", description="Transfer learning from one command.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("eval", help="evaluate a run folder on labelled images or a labelled text table")
    p.add_argument("run_dir")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("predict", help="predict labels for images or texts")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, or texts for a text model")
    p.add_argument(
        "--input", help="text model: a .csv/.tsv/.jsonl (its text column) or .txt, one text per line"
    )
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("lr-find", help="learning-rate range test: plot and suggested --lr")
    p.add_argument("data")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights")
    p.add_argument("--strategy", default="linear", choices=["linear", "finetune"])
    p.add_argument("--head", default="linear")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lr-find", help="folder for lr_find.png and lr_find.json")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("backbones", help="list the built-in backbones")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("demo", help="pretrained vs from scratch on scikit-learn's digits, offline")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    return parser


def _log_for(args: argparse.Namespace):
    # with --json, progress goes to stderr so stdout's last line is the JSON object
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TrainConfig, parse_duration
    from .runner import run

    options = {k: v for k, v in vars(args).items() if k not in {"command", "json"}}
    options["time_budget"] = parse_duration(options["time_budget"])
    result = run(TrainConfig(**options), log=_log_for(args))
    report = result.report
    out = {
        "accuracy": report["validation"]["accuracy"],
        "macro_f1": report["validation"]["macro_f1"],
        "seconds": round(report["seconds"], 2),
        "run_dir": str(result.run_dir),
        "feature_cache_hit": report["timing"]["feature_cache_hit"],
        "skipped_files": len(report["skipped_files"]),
    }
    if report["test"]:
        out |= {
            "test_accuracy": report["test"]["accuracy"],
            "test_macro_f1": report["test"]["macro_f1"],
        }
    if not args.json:
        print(f"validation accuracy {out['accuracy']:.4f}  macro-F1 {out['macro_f1']:.4f}")
        if report["test"]:
            print(f"test accuracy {out['test_accuracy']:.4f}  macro-F1 {out['test_macro_f1']:.4f}")
        print(f"run folder: {result.run_dir}  ({out['seconds']:.1f}s)")
    return out


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate_folder

    metrics = evaluate_folder(args.run_dir, args.data)
    if not args.json:
        print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  (n={metrics['n']})")
    return metrics


def cmd_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .predict import load

    model = load(args.run_dir)
    inputs = list(args.inputs) + (_texts_from(args.input, model.meta) if args.input else [])
    if not inputs:
        raise ValueError("nothing to predict: give images or texts, or --input FILE")
    args.inputs = inputs
    proba = model.predict_proba(inputs)
    k = max(1, min(args.top_k, len(model.classes_)))
    rows = []
    for source, p in zip(args.inputs, proba, strict=True):
        top = p.argsort()[::-1][:k]
        rows.append(
            {
                "input": source,
                "predictions": [
                    {"label": model.classes_[i], "probability": round(float(p[i]), 6)} for i in top
                ],
            }
        )
        if not args.json:
            print(source + "\t" + "\t".join(f"{model.classes_[i]} {p[i]:.4f}" for i in top))
    return rows


def _texts_from(path: str, meta: dict[str, Any]) -> list[str]:
    """Texts to predict from a table (the bundle's text column) or a plain file, one per line."""
    from .data.text import read_text_column

    return read_text_column(path, meta.get("recipe", {}).get("text_column", "text"))


def cmd_backbones(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .backbones import list_backbones

    rows = list_backbones()
    if not args.json:
        print(f"{'name':28} {'source':12} {'parameters':>12} {'input':>6}  offline")
        for r in rows:
            print(
                f"{r['name']:28} {r['source']:12} {r['parameters']:>12,} {r['input_size']:>6}  "
                f"{'yes' if r['offline'] else 'no (downloads when online)'}"
            )
        print("Also: any torchvision classification model by name, any timm model as timm/<name>.")
    return rows


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import DemoConfig, run_demo

    started = time.perf_counter()
    result = run_demo(
        DemoConfig(args.labels_per_class, args.image_size, args.seed, args.out), log=_log_for(args)
    )
    if not args.json:
        t, s = result["transfer"], result["scratch"]
        print(
            f"\nDigits, {result['labels_per_class']} labels per class, {result['test_images']} held-out "
            f"test images, {result['backbone']} at {args.image_size}px:"
        )
        print(f"  pretrained (ImageNet) + linear head : accuracy {t['accuracy']:.3f} in {t['seconds']:.0f}s")
        print(f"  same network from scratch           : accuracy {s['accuracy']:.3f} in {s['seconds']:.0f}s")
        print("Same images, same architecture, same time budget: the gap is what pretraining gives.")
        print(f"Run folder: {result['run_dir']}  (total {time.perf_counter() - started:.0f}s)")
    return result


def cmd_lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from .config import TrainConfig
    from .lr_find import find_lr

    config = TrainConfig(
        data=args.data,
        backbone=args.backbone,
        weights=args.weights,
        strategy=args.strategy,
        head=args.head,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return find_lr(config, Path(args.out), steps=args.steps, log=_log_for(args))


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "backbones": cmd_backbones,
    "lr-find": cmd_lr_find,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .errors import USER_ERRORS

    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    try:
        result = COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"graft: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
