"""`graft predict` at volume: one call on many mixed files (sizes; modes RGB, L, RGBA, P, CMYK;
corrupt, zero-byte, a folder, a missing path) predicts the good ones, reports each bad one in the
output and in --json, exits 3, and streams: peak memory does not grow with the number of files.
The inputs come from bench/predict_volume.py, which prints the same numbers."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from graft.cli import main

BENCH = Path(__file__).resolve().parents[1] / "bench" / "predict_volume.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("predict_volume", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


@pytest.fixture(scope="module")
def run_dir(bench, tmp_path_factory) -> Path:
    tiny = {"backbone": "timm/test_efficientnet", "weights": "random", "image_size": 32}
    return bench.train_tiny_run(tmp_path_factory.mktemp("volume"), **tiny)


def _check_rows(rows: list[dict], inputs: dict) -> None:
    predicted = [r["input"] for r in rows if "predictions" in r]
    failed = [r["input"] for r in rows if "error" in r]
    assert sorted(predicted) == sorted(inputs["good"])
    assert sorted(failed) == sorted(inputs["bad"])
    for row in rows:
        if "error" in row:
            assert "\n" not in row["error"] and Path(row["input"]).name in row["error"]


def test_predict_of_many_mixed_files_reports_each_bad_one_and_exits_3(bench, run_dir, tmp_path, capsys):
    inputs = bench.make_inputs(tmp_path / "inputs", 60)
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
def test_predict_streams_1000_files_in_the_memory_of_200(bench, run_dir, tmp_path):
    """Two fresh processes, 200 and 1,000 mixed files: every file accounted for, and the peak RSS
    of the process (and of its decoding worker) within 64 MB of each other (streaming). Holding
    1,000 decoded images of up to 480 px at once would take about 350 MB more."""
    env = os.environ | {"GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    peaks = {}
    for n in (200, 1000):
        inputs = bench.make_inputs(tmp_path / f"inputs-{n}", n)
        result = bench.predict(run_dir, inputs["argv"], env)
        assert result["code"] == 3, result["stderr"][-2000:]
        _check_rows(result["rows"], inputs)
        assert len(inputs["good"]) > 0.9 * n and len(inputs["bad"]) >= 0.04 * n
        peaks[n] = (result["peak_rss_mb"], result["children_peak_rss_mb"])
    print(f"peak RSS MB (process, worker): 200 files {peaks[200]}, 1000 files {peaks[1000]}")
    assert peaks[1000][0] - peaks[200][0] < 64
    assert peaks[1000][1] - peaks[200][1] < 64
