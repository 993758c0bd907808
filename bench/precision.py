"""Precision across machines, on photo-sized JPEGs: what `--precision auto` decides on this CPU and
with GRAFT_CPU_BF16=1/0 (a CPU with / without native bf16), the extraction engine each run picks
(its parity against fp32 PyTorch and its speed against the PyTorch that would otherwise run, from
report.json), and an export's ONNX Runtime probabilities against `graft.load(run,
precision="fp32")` and against the default `graft.load(run)`.

    python bench/precision.py [--photos 600] [--size 224]

Each setting trains `--strategy linear` on the same photos (CIFAR-10 JPEGs upscaled to 500 x 375,
made by bench/time_budget.py's recipe) with a fresh feature cache, then exports the run and
compares probabilities on 64 of its images. One table from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from time_budget import CIFAR, WORK, photos  # noqa: E402

PROBE = """
import json, sys
import numpy as np
import graft
run, onnx_path, images = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
fp32 = graft.load(run, precision="fp32").predict_proba(images)
default = graft.load(run)
p_default = default.predict_proba(images)
p_onnx = graft.load(onnx_path).predict_proba(images)
print(json.dumps({
    "load_default": default.precision.name,
    "onnx_vs_fp32": float(np.abs(p_onnx - fp32).max()),
    "default_vs_fp32": float(np.abs(p_default - fp32).max()),
    "labels_agree": float((p_default.argmax(1) == fp32.argmax(1)).mean()),
}))
"""


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:5])} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def one(setting: str | None, data: Path, size: int, images: list[str]) -> dict:
    name = f"bf16-{setting}" if setting is not None else "auto"
    out = WORK / "precision" / name
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"GRAFT_CACHE_DIR": cache}
        if setting is not None:
            env["GRAFT_CPU_BF16"] = setting
        else:
            env.pop("GRAFT_CPU_BF16", None)
        train = [sys.executable, "-m", "graft", "train", str(data), "--strategy", "linear"]
        train += ["--image-size", str(size), "--out", str(out), "--overwrite", "--json"]
        _run(train, env)
        onnx_path = out.parent / f"{name}.onnx"
        export = [sys.executable, "-m", "graft", "export", str(out), "--out", str(onnx_path), "--json"]
        exported = json.loads(_run(export, env).splitlines()[-1])
        probe = [sys.executable, "-c", PROBE, str(out), str(onnx_path), json.dumps(images)]
        compared = json.loads(_run(probe, env))
    report = json.loads((out / "report.json").read_text())
    engine = report["timing"]["features_engine"] or {}
    return {
        "setting": "auto (this CPU)" if setting is None else f"GRAFT_CPU_BF16={setting}",
        "precision": report["plan"]["precision"],
        "engine": engine.get("name"),
        "engine_reason": engine.get("reason"),
        "parity_vs_fp32": engine.get("max_abs_diff"),
        "speedup": engine.get("speedup"),
        "extraction_s": round(report["timing"]["feature_extraction_seconds"], 1),
        "export_parity": exported["max_abs_diff"],
        **compared,
    }


def _e(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=600, help="photos in all (10 classes)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is missing: unpack the CIFAR-10 JPEGs first")
    data = photos(args.photos // 10)
    images = sorted(str(p) for p in data.glob("*/*"))[:: max(1, args.photos // 64)][:64]
    rows = [one(setting, data, args.size, images) for setting in (None, "1", "0")]
    print("| setting | precision | engine (why) | ORT vs fp32 PyTorch | speed vs that PyTorch | "
          "extraction s | export parity | ONNX vs load(fp32) | load() default | default vs fp32 | "
          "same labels |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['setting']} | {r['precision']} | {r['engine']} ({r['engine_reason']}) | "
            f"{_e(r['parity_vs_fp32'])} | {r['speedup']}x | {r['extraction_s']} | {_e(r['export_parity'])} | "
            f"{_e(r['onnx_vs_fp32'])} | {r['load_default']} | {_e(r['default_vs_fp32'])} | "
            f"{r['labels_agree']:.0%} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
