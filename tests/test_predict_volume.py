"""`graft predict` at volume: one call on many mixed files (sizes; modes RGB, L, RGBA, P, CMYK;
corrupt, zero-byte, a folder, a missing path) predicts the good ones, reports each bad one in the
output and in --json, exits 3, and streams: peak memory does not grow with the number of files.
The inputs: images of 16 to 480 px in several modes and formats, about 5% corrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from graft.cli import main

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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tiny = {"backbone": "timm/test_efficientnet", "weights": "random", "image_size": 32}
    return train_tiny_run(tmp_path_factory.mktemp("volume"), **tiny)


def _check_rows(rows: list[dict], inputs: dict) -> None:
    predicted = [r["input"] for r in rows if "predictions" in r]
    failed = [r["input"] for r in rows if "error" in r]
    assert sorted(predicted) == sorted(inputs["good"])
    assert sorted(failed) == sorted(inputs["bad"])
    for row in rows:
        if "error" in row:
            assert "\n" not in row["error"] and Path(row["input"]).name in row["error"]


def test_predict_of_many_mixed_files_reports_each_bad_one_and_exits_3(run_dir, tmp_path, capsys):
    inputs = make_inputs(tmp_path / "inputs", 60)
    assert main(["predict", str(run_dir), *inputs["argv"]]) == 3
    out, err = capsys.readouterr()
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == sorted(inputs["good"])
    for bad in inputs["bad"]:
        assert f"error: {bad}" in err
    total = len(inputs["good"]) + len(inputs["bad"])
    assert f"graft: {len(inputs['bad'])} of {total} input(s) could not be predicted" in err
    assert main(["predict", str(run_dir), *inputs["argv"], "--json"]) == 3
    _check_rows(json.loads(capsys.readouterr().out.splitlines()[-1])["predictions"], inputs)


@pytest.mark.slow
def test_predict_streams_1000_files_in_the_memory_of_200(run_dir, tmp_path):
    """Two fresh processes, 200 and 1,000 mixed files: every file accounted for, and the peak RSS
    of the process (and of its decoding worker) within 64 MB of each other (streaming). Holding
    1,000 decoded images of up to 480 px at once would take about 350 MB more."""
    env = os.environ | {"GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    peaks = {}
    for n in (200, 1000):
        inputs = make_inputs(tmp_path / f"inputs-{n}", n)
        result = predict(run_dir, inputs["argv"], env)
        assert result["code"] == 3, result["stderr"][-2000:]
        _check_rows(result["rows"], inputs)
        assert len(inputs["good"]) > 0.9 * n and len(inputs["bad"]) >= 0.04 * n
        peaks[n] = (result["peak_rss_mb"], result["children_peak_rss_mb"])
    print(f"peak RSS MB (process, worker): 200 files {peaks[200]}, 1000 files {peaks[1000]}")
    assert peaks[1000][0] - peaks[200][0] < 64
    assert peaks[1000][1] - peaks[200][1] < 64
