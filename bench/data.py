"""The data the suites share, read-only: the CIFAR-10 JPEG copy, the text CSVs, and per-class subsets
of an image folder as folders of symlinks (so graft and a baseline see identical files)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GRAFT_BENCH_CIFAR", ROOT / ".cache" / "data" / "cifar10"))


def _shared_text() -> Path:
    """../shared/data/text beside the checkout, or beside a folder above it (a worktree's)."""
    for folder in ROOT.parents:
        if (folder / "shared" / "data" / "text").is_dir():
            return folder / "shared" / "data" / "text"
    return ROOT.parent / "shared" / "data" / "text"


TEXT = Path(os.environ.get("GRAFT_BENCH_TEXT") or _shared_text())
BENCH = ROOT / ".cache" / "bench"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VEHICLES = {"airplane", "automobile", "ship", "truck"}
UNPACK_HINT = (
    "mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10"
)


def require_data(*folders: Path) -> None:
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"{folder} does not exist; unpack the CIFAR-10 copy first:\n    {UNPACK_HINT}")


def _wanted(class_dir: Path, per_class: int) -> dict[str, Path]:
    files = sorted(
        p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )[:per_class]
    return {f.relative_to(class_dir).as_posix(): f.resolve() for f in files}


def subset_folder(source: Path, per_class: int | None, name: str) -> Path:
    """A folder of symlinks to the first `per_class` images of each class of `source` (sorted names,
    as ImageFolder orders them), under .cache/bench/subsets/<name>; `source` itself when per_class is
    None. Rebuilt only when missing or different."""
    if not per_class:
        return source
    dest = BENCH / "subsets" / name
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        target, wanted = dest / class_dir.name, _wanted(class_dir, per_class)
        links = sorted(target.rglob("*"), reverse=True) if target.is_dir() else []
        if {p.relative_to(target).as_posix() for p in links if p.is_symlink()} == set(wanted):
            continue
        for p in links:
            if p.is_symlink() or p.is_file():
                p.unlink()
        for rel, real in wanted.items():
            link = target / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(real, link)
    return dest


def table_sample(source: Path, target: Path, n: int) -> Path:
    """n rows of a CSV drawn with seed 0, written once to `target`."""
    if not target.is_file():
        with open(source, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), reader.fieldnames
        random.Random(0).shuffle(rows)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows[:n])
    return target


def cifar_table(name: str, split: str, per_class: int, rotate: bool) -> Path:
    """CIFAR-10's first `per_class` images of each class as PNGs and a labels.csv: the class and
    "animal" or "vehicle" (multi-label), or, with `rotate`, each turned by a seeded random angle in
    [-45, 45] degrees and labelled with |angle| (regression). Made once."""
    from PIL import Image

    folder = BENCH / "tasks" / name / split
    table = folder / "labels.csv"
    if table.is_file() and table.stat().st_mtime > Path(__file__).stat().st_mtime:  # made by this script
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}-{split}")
    rows = []
    for class_dir in sorted(p for p in (DATA / split).iterdir() if p.is_dir()):
        for source in sorted(class_dir.iterdir())[:per_class]:
            target = f"{class_dir.name}-{source.stem}.png"
            image = Image.open(source).convert("RGB")
            if rotate:
                angle = rng.uniform(-45, 45)
                image.rotate(angle, resample=Image.BILINEAR).save(folder / target)
                rows.append([target, f"{abs(angle):.2f}"])
            else:
                kind = "vehicle" if class_dir.name in VEHICLES else "animal"
                image.save(folder / target)
                rows.append([target, f"{class_dir.name}|{kind}"])
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "angle" if rotate else "labels"], *rows])
    return folder


def make_photos(sources: list[str], folder: Path, size: tuple[int, int] = (500, 375)) -> list[str]:
    """CIFAR-10 JPEGs upscaled (bicubic) to `size` and saved as quality-90 JPEGs: photo-sized files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sources):
        path = folder / f"{i:05d}.jpg"
        if not path.is_file():
            Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(path, quality=90)
        out.append(str(path))
    return out
