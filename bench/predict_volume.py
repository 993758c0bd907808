"""`graft predict` at volume: one call on N mixed files, peak memory by N.

    python bench/predict_volume.py [--sizes 200,1000] [--run RUN_DIR] [--engine auto]

The inputs (`make_inputs`, also used by tests/test_predict_volume.py): images of 16 to 480 px in
the modes RGB, L, RGBA, P and CMYK (PNG, JPEG, WEBP, GIF), about 5% corrupt (random bytes,
truncated JPEGs), one zero-byte file, one subfolder of images given as a folder, one missing path.
Every measurement is a fresh `python -m graft.cli predict RUN INPUTS... --json` process; peak RSS
is `ru_maxrss` of that process and, separately, of its children (the DataLoader's decoding
worker), read with `resource.getrusage` in a small wrapper around `graft.cli.main`. Streaming
means the peak does not grow with N. Without --run, a linear probe of the packaged
EfficientNet-Lite0 at 64 px on tiny synthetic images is trained first (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MODES = ("RGB", "L", "RGBA", "P", "CMYK")
FORMATS = {"RGB": ("png", "jpg", "webp"), "L": ("png", "jpg"), "RGBA": ("png", "webp"), "P": ("png", "gif")}
MEASURE = (
    "import json, resource, sys\n"
    "from graft.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "kb = lambda who: resource.getrusage(who).ru_maxrss\n"
    "rss = {'self_kb': kb(resource.RUSAGE_SELF), 'children_kb': kb(resource.RUSAGE_CHILDREN)}\n"
    "print('maxrss ' + json.dumps(rss), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Image.Image:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return rgb.convert(mode)


def make_inputs(root: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """n inputs under root as `graft predict` arguments, and what must become of them:
    {"argv", "good" (paths that must be predicted), "bad" (arguments that must be reported)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    argv: list[str] = []
    good: list[str] = []
    bad: list[str] = []
    folder = root / "subfolder"  # one argument that is a folder of images
    for i in range(3):
        path = folder / "nested" / f"{i}.png" if i else folder / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, "RGB", (40, 30)).save(path)
        good.append(str(path))
    argv.append(str(folder))
    (root / "zero.png").write_bytes(b"")
    argv.append(str(root / "zero.png"))
    bad.append(str(root / "zero.png"))
    argv.append(str(root / "missing.jpg"))
    bad.append(str(root / "missing.jpg"))
    for i in range(n - len(argv)):  # n arguments in all
        if i % 20 == 7:  # about 5% corrupt
            path = root / f"{i:04d}-corrupt.{'jpg' if i % 40 == 7 else 'png'}"
            if i % 40 == 7:
                _image(rng, "RGB", (200, 150)).save(path, quality=90)
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
            else:
                path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes())
            bad.append(str(path))
        else:
            mode = MODES[i % len(MODES)]
            fmt = "jpg" if mode == "CMYK" else FORMATS[mode][i % len(FORMATS[mode])]
            size = (int(rng.integers(16, 481)), int(rng.integers(16, 481)))
            path = root / f"{i:04d}-{mode}.{fmt}"
            _image(rng, mode, size).save(path)
            good.append(str(path))
        argv.append(str(path))
    return {"argv": argv, "good": good, "bad": bad}


def predict(run_dir: Path, argv: list[str], env: dict[str, str] | None = None, *extra: str) -> dict[str, Any]:
    """One `graft predict ... --json` process: exit code, rows, peak RSS (MB), seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, "predict", str(run_dir), *argv, "--json", *extra],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    rss_lines = [line for line in done.stderr.splitlines() if line.startswith("maxrss ")]
    if not lines or not rss_lines:
        raise RuntimeError(f"graft predict failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = json.loads(rss_lines[-1].removeprefix("maxrss "))
    return {
        "code": done.returncode,
        "rows": json.loads(lines[-1])["predictions"],
        "stderr": done.stderr,
        "peak_rss_mb": rss["self_kb"] / 1024,
        "children_peak_rss_mb": rss["children_kb"] / 1024,
        "seconds": seconds,
    }


def train_tiny_run(root: Path, **options: Any) -> Path:
    """A linear probe (of the packaged backbone at 64 px unless `options` say otherwise: the tests
    take a tiny random network) on 8 synthetic images per class."""
    from graft.config import TrainConfig
    from graft.runner import run

    rng = np.random.default_rng(1)
    for label, colour in {"blue": (40, 60, 200), "red": (200, 40, 40)}.items():
        (root / "data" / label).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / label / f"{i}.png")
    settings = {"strategy": "linear", "image_size": 64, "val_fraction": 0.25} | options
    config = TrainConfig(data=str(root / "data"), out=str(root / "run"), **settings)
    run(config, log=lambda line: None)
    return root / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000", help="numbers of inputs, one process each")
    parser.add_argument("--run", help="a run folder (default: train a tiny one)")
    parser.add_argument("--engine", default="auto", help="graft predict --engine")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-predict-volume-") as tmp:
        env = os.environ | {"GRAFT_CACHE_DIR": str(Path(tmp) / "cache")}
        run_dir = Path(args.run) if args.run else train_tiny_run(Path(tmp))
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            inputs = make_inputs(Path(tmp) / f"inputs-{n}", n)
            result = predict(run_dir, inputs["argv"], env, "--engine", args.engine)
            predicted = sum("predictions" in r for r in result["rows"])
            failed = sum("error" in r for r in result["rows"])
            rows.append(
                {
                    "arguments": len(inputs["argv"]),
                    "rows": len(inputs["good"]) + len(inputs["bad"]),
                    "predicted": predicted,
                    "failed": failed,
                    "exit": result["code"],
                    "peak_rss_mb": round(result["peak_rss_mb"], 1),
                    "worker_peak_rss_mb": round(result["children_peak_rss_mb"], 1),
                    "seconds": round(result["seconds"], 1),
                }
            )
    if args.json:
        print(json.dumps(rows))
        return
    print(
        f"{'args':>6} {'rows':>6} {'predicted':>9} {'failed':>6} {'exit':>4} {'peak RSS MB':>11} "
        f"{'worker MB':>9} {'seconds':>7}"
    )
    for r in rows:
        print(
            f"{r['arguments']:>6} {r['rows']:>6} {r['predicted']:>9} {r['failed']:>6} {r['exit']:>4} "
            f"{r['peak_rss_mb']:>11.1f} {r['worker_peak_rss_mb']:>9.1f} {r['seconds']:>7.1f}"
        )


if __name__ == "__main__":
    main()
