"""Sentence pairs as a bi-encoder (Sentence-BERT) beside the cross-encoder: the two texts encoded
alone by one encoder, their features, `--pair-encoding auto|bi|cross`, the bundle, predict, export,
serve and `encode`, and the rule that a pair regression never ends below the zero-shot cosine."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="text needs the `text` extra")

import graft  # noqa: E402
from graft.backbones import TextPreprocessing, create_backbone  # noqa: E402
from graft.cli import main  # noqa: E402
from graft.config import TrainConfig  # noqa: E402
from graft.modalities.text_batches import Padding, tokenize  # noqa: E402
from graft.runner import run  # noqa: E402
from graft.tasks.regression import spearman  # noqa: E402

SUBJECTS = ["a man", "a woman", "a child", "the dog", "a cat", "two boys", "an old lady", "the chef"]
ACTIONS = ["is playing a guitar", "is riding a bike", "is cooking pasta", "is running on the beach",
           "is reading a book", "is swimming in a pool", "is climbing a tree", "is eating an apple"]
PLACES = ["in the park", "at home", "on the street", "near the river", "in a kitchen", "at night"]


@pytest.fixture(scope="module")
def minilm():
    return create_backbone("minilm")


def _sentence(rng: random.Random) -> list[str]:
    return [rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)]


def _similarity_table(path: Path, n: int, seed: int) -> Path:
    """Pairs of generated sentences sharing 0-3 of their three parts; the score (0-5) counts the
    shared parts, with noise: a similarity a sentence encoder sees without training."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for _ in range(n):
            a = _sentence(rng)
            b = [part if rng.random() < 0.5 else _sentence(rng)[k] for k, part in enumerate(a)]
            shared = sum(x == y for x, y in zip(a, b, strict=True))
            score = min(5.0, max(0.0, 5.0 * shared / 3 + rng.gauss(0, 0.6)))
            writer.writerow([" ".join(a), " ".join(b), f"{score:.2f}"])
    return path


def _rows(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["sentence1"], r["sentence2"]) for r in rows], np.array([float(r["score"]) for r in rows])


def _zero_shot_spearman(minilm, pairs: list[tuple[str, str]], scores: np.ndarray, length: int) -> float:
    """The packaged encoder with no training: each text mean-pooled, the cosine of the two."""
    ids = tokenize(minilm.tokenizer, [t for pair in pairs for t in pair], length)
    with torch.inference_mode():
        pooled = minilm.body.embed(Padding(0, length)(ids, torch.device("cpu")))
    u, v = pooled[0::2], pooled[1::2]
    return spearman(torch.nn.functional.cosine_similarity(u, v).numpy(), scores)


@pytest.fixture(scope="module")
def similarity(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": _similarity_table(root / "train.csv", 160, 0),
        "val": _similarity_table(root / "val.csv", 80, 1),
        "root": root,
    }


def _config(data: dict[str, Path], out: str, **changes) -> TrainConfig:
    config = TrainConfig(
        data=str(data["train"]), val=str(data["val"]), text_column="sentence1,sentence2",
        label_column="score", task="regression", strategy="linear", epochs=5,
        precision="fp32",  # the zero-shot cosine below is fp32's (bf16 moves these close scores)
        out=str(data["root"] / out),
    )  # fmt: skip
    return replace(config, **changes)


@pytest.fixture(scope="module")
def auto_run(similarity):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(similarity["root"] / "cache"))
        return run(_config(similarity, "auto", test=str(similarity["val"])), log=lambda line: None)


@pytest.fixture(scope="module")
def bi_run(similarity):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(similarity["root"] / "cache"))
        return run(_config(similarity, "bi", pair_encoding="bi"), log=lambda line: None)


def test_a_bi_encoded_pair_is_its_two_texts_encoded_alone(minilm) -> None:
    """Each side is tokenised alone, the row holds both side by side, and the body's features are
    [u, v, |u-v|, u*v, cos] of the two texts' own embeddings, padding ignored."""
    pairs = [("a man is playing a guitar in the park", "a man plays guitar"), ("a dog", "a cat is sleeping")]
    ids = tokenize(minilm.tokenizer, pairs, 64, pairs=True, bi=True)
    alone = tokenize(minilm.tokenizer, [t for pair in pairs for t in pair], 64)
    lengths = [max(len(alone[2 * i]), len(alone[2 * i + 1])) for i in range(2)]
    assert [tuple(t.shape) for t in ids] == [(lengths[0], 2), (lengths[1], 2)]
    assert ids[1][:, 1][: len(alone[3])].tolist() == alone[3].tolist()
    assert set(ids[1][len(alone[2]) :, 0].tolist()) <= {0}  # the shorter side padded
    batch = Padding(0, 64)(ids, torch.device("cpu"))
    assert batch.shape == (2, 2 * max(lengths))
    body = minilm.body
    try:
        body.pair_features = "similarity"
        with torch.inference_mode():
            features = body(batch)
            single = torch.stack([body.embed(t.unsqueeze(0))[0] for t in alone])
    finally:
        body.pair_features = None
    u, v = single[0::2], single[1::2]
    cosine = torch.nn.functional.cosine_similarity(u, v).unsqueeze(1)
    expected = torch.cat([u, v, (u - v).abs(), u * v, cosine], dim=1)
    assert features.shape == (2, 4 * 384 + 1)
    assert torch.allclose(features, expected, atol=1e-5)


def test_pair_regression_auto_never_ends_below_the_zero_shot_cosine(auto_run, similarity, minilm) -> None:
    """`--pair-encoding auto` trains both encodings and keeps the better by validation Spearman;
    the bi-encoder's probe has the cosine of the two embeddings (the zero-shot similarity,
    calibrated) as a candidate, so the run ends at least as high as using the encoder untrained."""
    report = auto_run.report
    [line] = [n for n in report["plan"]["notes"] if n.startswith("pair encoding auto")]
    assert "validation spearman: bi " in line and ", cross " in line
    val_pairs, val_scores = _rows(similarity["val"])
    zero_shot = _zero_shot_spearman(minilm, val_pairs, val_scores, report["preprocessing"]["max_length"])
    # identical sentences (all three parts shared) have a cosine of 1 up to rounding, whose order
    # among them the batch's padding decides: a few ranks' worth of tolerance
    assert report["validation"]["spearman"] >= zero_shot - 0.005
    assert report["preprocessing"]["pair_encoding"] in line.split("keeps the ")[1]
    # the kept encoding alone is tested, once: here the test set is the validation set
    assert report["test"]["n"] == 80 and report["test"]["spearman"] == pytest.approx(
        report["validation"]["spearman"], abs=1e-6
    )


def test_a_bi_encoder_bundle_predicts_exports_serves_and_encodes_alike(bi_run, similarity, tmp_path) -> None:
    """--pair-encoding bi: the bundle records it; graft.load, `predict --input`, the ONNX export
    (parity checked on pairs) and `graft serve` give the same values; `encode` gives unit vectors
    whose cosines are the model's similarity feature."""
    report = bi_run.report
    assert report["preprocessing"]["pair_encoding"] == "bi"
    pairs, _ = _rows(similarity["val"])
    pairs = pairs[:6]
    loaded = graft.load(bi_run.run_dir, device="cpu", precision="fp32")
    values = loaded.predict(pairs)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        argv = ["predict", str(bi_run.run_dir), "--input", str(similarity["val"]), "--json"]
        code = main([*argv, "--precision", "fp32"])
    assert code == 0
    printed = json.loads(out.getvalue().strip().splitlines()[-1])
    printed = printed["predictions"] if isinstance(printed, dict) else printed
    from_cli = [p["predictions"][0]["value"] if "predictions" in p else p["value"] for p in printed[:6]]
    assert np.allclose(from_cli, values, atol=1e-4)

    pytest.importorskip("onnxruntime", reason="export needs the `onnx` extra")
    from graft.export.onnx import export_onnx

    exported = export_onnx(bi_run.run_dir, tmp_path / "model.onnx", samples=8)
    assert exported["max_abs_diff"] <= 1e-4
    on_onnx = graft.load(tmp_path / "model.onnx")
    assert np.allclose(on_onnx.predict(pairs), values, atol=1e-3)

    pytest.importorskip("fastapi", reason="serve needs the `serve` extra")
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    client = TestClient(create_app(bi_run.run_dir, precision="fp32"))
    answer = client.post("/predict", json={"texts": [list(p) for p in pairs]})
    assert answer.status_code == 200, answer.text
    served = [p["value"] if "value" in p else p["values"]["score"] for p in answer.json()["predictions"]]
    assert np.allclose(served, values, atol=1e-3)

    embeddings = loaded.encode([a for a, _ in pairs] + [b for _, b in pairs])
    assert embeddings.shape == (12, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_pair_encoding_is_refused_where_there_are_no_pairs(similarity) -> None:
    from graft.errors import ConfigError

    config = TrainConfig(
        data=str(similarity["train"]), text_column="sentence1", label_column="score",
        task="regression", strategy="linear", pair_encoding="bi", out=str(similarity["root"] / "x"),
    )
    with pytest.raises(ConfigError, match="--pair-encoding bi is for sentence pairs"):
        run(config, log=lambda line: None)


def test_older_preprocessing_reads_as_a_cross_encoder() -> None:
    prep = TextPreprocessing.from_dict({"max_length": 64, "model_max_length": 512, "pooling": "mean",
                                        "pad_id": 0, "pairs": True})
    assert prep.pair_encoding == "cross" and not prep.bi


def test_a_fine_tuned_pair_regression_that_ranks_below_its_probe_gives_way_to_it(
    similarity, minilm, monkeypatch
) -> None:
    """Keep-best follows R2; the probe's R2 reported at minus infinity, keep-best keeps the
    fine-tuned epoch that a learning rate far too high wrecked. The run still ends with the probe
    (the zero-shot cosine, calibrated): a regression's models are ranked by Spearman at the end."""
    from graft.training import probe

    probe_once = probe._probe_once

    def reported_worse(job, head, **kwargs):
        outcome = probe_once(job, head, **kwargs)
        outcome.result.val = {**outcome.result.val, "r2": -1e9}
        return outcome

    monkeypatch.setattr(probe, "_probe_once", reported_worse)
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(similarity["root"] / "cache"))
    config = _config(similarity, "wrecked", pair_encoding="bi", strategy="finetune", epochs=1, lr=0.5,
                     feature_layers="1", overwrite=True)  # fmt: skip
    lines: list[str] = []
    report = run(config, log=lines.append).report
    assert report["history"][-1]["epoch"] == 1
    assert any(line.startswith("the probe is kept: validation spearman") for line in lines)
    assert report["kept"]["epoch"] == 0
    val_pairs, val_scores = _rows(similarity["val"])
    zero_shot = _zero_shot_spearman(minilm, val_pairs, val_scores, report["preprocessing"]["max_length"])
    assert report["validation"]["spearman"] >= zero_shot - 0.005


def test_a_regression_head_on_few_features_starts_at_the_least_squares_fit() -> None:
    """The cosine alone is one feature: Adam's steps of about the LR each would leave its slope
    far from the fit after a probe's 500 steps, so the head starts at the least-squares fit of the
    standardised targets (where there are at least 10 examples a feature) and the probe's R2 is
    the calibration's."""
    from graft.tasks import get_task

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1))
    y = 3.0 * x[:, 0] + 2.0 + rng.normal(scale=0.1, size=200)
    task = get_task("regression", ("score",)).fit(y[:, None], {})
    weight, bias = task.linear_start(torch.tensor(x, dtype=torch.float32), torch.tensor(y[:, None]))
    std = float(np.std(y))
    assert float(weight[0, 0]) == pytest.approx(3.0 / std, rel=0.02)
    assert float(bias[0]) == pytest.approx((2.0 - float(np.mean(y))) / std, abs=0.02)
    wide = torch.zeros(200, 30)  # 200 examples for 30 features: not well determined
    assert task.linear_start(wide, torch.tensor(y[:, None])) is None


def test_four_feature_layers_on_pairs_under_auto_train_the_cross_encoder(similarity, monkeypatch) -> None:
    """--feature-layers 4 pools layers a bi-encoder does not: `auto` then trains the cross-encoder
    alone rather than failing on an encoding the user did not ask for."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(similarity["root"] / "cache"))
    config = _config(similarity, "four", feature_layers="4", overwrite=True)
    report = run(config, log=lambda line: None).report
    assert report["preprocessing"]["pair_encoding"] == "cross" and report["preprocessing"]["layers"] == 4
    assert not any(n.startswith("pair encoding auto") for n in report["plan"]["notes"])
