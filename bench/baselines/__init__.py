"""The recipes graft is measured against, as their authors or guides write them: the seed article's
loop (seed_recipe), fastai's `fine_tune` (fastai_fine_tune, run by a Python that has fastai), the
Hugging Face Trainer (hf_trainer) and the Keras transfer-learning guide (keras_guide)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

FASTAI_SCRIPT = Path(__file__).with_name("fastai_fine_tune.py")


def run_fastai(train: Path, test: Path, size: int, epochs: int, python: Path) -> dict[str, Any]:
    """fastai's fine_tune in its own interpreter (fastai is not one of graft's dependencies)."""
    if not python.is_file():
        return {"error": f"no fastai Python at {python}"}
    cmd = [str(python), str(FASTAI_SCRIPT), str(train), str(test)]
    cmd += ["--image-size", str(size), "--epochs", str(epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": " ".join(done.stderr.strip().splitlines()[-3:])}
    return json.loads(done.stdout.strip().splitlines()[-1])
