"""Text end to end: the packaged MiniLM backbone, linear and fine-tuning runs on a tiny synthetic
review table, the bundle round trip (tokenizer inside), predict from the CLI, offline errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers", reason="text needs the `text` extra")

import graft  # noqa: E402
from graft.backbones import BackboneError, create_backbone  # noqa: E402
from graft.cli import main  # noqa: E402
from graft.config import TrainConfig  # noqa: E402
from graft.modalities.text import bucketed_order  # noqa: E402
from graft.runner import run  # noqa: E402

GOOD = ["great", "wonderful", "lovely", "excellent", "superb", "delightful"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "bad"]
NOUNS = ["movie", "film", "plot", "acting", "story", "ending"]


def _reviews(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            word = rng.choice(GOOD if label == "pos" else BAD)
            writer.writerow([f"the {rng.choice(NOUNS)} was {word} and so was the {rng.choice(NOUNS)}", label])
    return path


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def minilm():
    return create_backbone("minilm")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text")
    return {
        "train": _reviews(root / "train.csv", 80, 0),
        "test": _reviews(root / "test.csv", 30, 1),
        "root": root,
    }


@pytest.fixture(scope="module")
def linear_run(data):
    config = TrainConfig(
        data=str(data["train"]),
        test=str(data["test"]),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        out=str(data["root"] / "linear"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(data["root"] / "cache"))
        return run(config, log=lambda line: None)


# --------------------------------------------------------------------------- backbone


def test_minilm_has_named_groups_and_loads_offline(minilm, monkeypatch) -> None:
    assert [g for g, _ in minilm.groups] == ["embeddings", *[f"layer.{i}" for i in range(6)]]
    assert minilm.modality == "text" and minilm.num_features == 384
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    started = time.perf_counter()
    create_backbone("minilm")
    assert time.perf_counter() - started < 60


def test_mean_pooling_ignores_padding(minilm) -> None:
    ids = torch.tensor(minilm.tokenizer(["a short text"])["input_ids"])
    padded = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    minilm.body.eval()
    with torch.inference_mode():
        assert torch.allclose(minilm.body(ids), minilm.body(padded), atol=1e-5)


def test_hub_model_offline_fails_fast_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(BackboneError, match="huggingface.co cannot be reached") as err:
        create_backbone("hf/graft-test/no-such-model")
    assert time.perf_counter() - started < 10
    assert "\n" not in str(err.value)


def test_length_buckets_hold_similar_lengths() -> None:
    lengths = list(range(1000))
    batches = bucketed_order(lengths, 10, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == lengths
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert np.mean(spreads) < 50  # a random batch of 10 out of 1000 spreads ~800


# --------------------------------------------------------------------------- runs


def test_linear_run_learns_and_reports(linear_run) -> None:
    report = linear_run.report
    assert report["modality"] == "text" and report["backbone"]["name"] == "minilm"
    assert report["test"]["accuracy"] >= 0.9
    assert report["preprocessing"]["max_length"] <= 24  # from the data, not the model's 512


def test_text_bundle_round_trip(linear_run) -> None:
    run_dir = linear_run.run_dir
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert not list(run_dir.rglob("*.pkl")) and not list(run_dir.rglob("*.bin"))
    model = graft.load(run_dir)
    texts = ["what a superb film", "the plot was dreadful"]
    assert model.predict(texts) == ["pos", "neg"]
    proba = model.predict_proba(texts)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    saved = load_file(str(run_dir / "model.safetensors"))
    assert set(saved) == set(model.model.state_dict())


def test_predict_cli_texts_and_input_file(linear_run, data) -> None:
    code, out = _cli(
        ["predict", str(linear_run.run_dir), "a lovely story", "--input", str(data["test"]), "--json"]
    )
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])
    assert len(rows) == 31 and rows[0]["input"] == "a lovely story"
    assert rows[0]["predictions"][0]["label"] == "pos"


def test_second_linear_run_hits_the_feature_cache(linear_run, data) -> None:
    config = TrainConfig(
        data=str(data["train"]),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        lr=3e-3,
        out=str(data["root"] / "linear2"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(data["root"] / "cache"))
        result = run(config, log=lambda line: None)
    assert result.report["timing"]["feature_cache_hit"]


def _changed_groups(before: dict, after: dict) -> set[str]:
    """The encoder's groups (embeddings, layer.i) with at least one changed weight."""
    changed = set()
    for key, value in before.items():
        if not torch.equal(value, after[key]):
            match = re.search(r"layer\.(\d+)\.", key)
            changed.add(f"layer.{match.group(1)}" if match else "embeddings")
    return changed


@pytest.mark.parametrize(
    ("strategy", "train_groups", "trained"),
    [
        ("finetune", None, {"embeddings", *(f"layer.{i}" for i in range(6))}),  # all 7 groups
        ("finetune", 3, {"layer.3", "layer.4", "layer.5"}),  # --train-groups 3
        ("gradual", None, {"layer.5"}),  # epoch 1 the head, epoch 2 the head and the top group
    ],
)
def test_finetune_and_gradual_train_the_encoder(data, strategy, train_groups, trained) -> None:
    out = data["root"] / f"{strategy}-{train_groups}"
    config = TrainConfig(
        data=str(data["train"]),
        text_column="review",
        label_column="sentiment",
        strategy=strategy,
        epochs=2,
        batch_size=16,
        lr=1e-3,  # 10 steps in all: a high rate, so that a working loop visibly learns
        train_groups=train_groups,
        out=str(out),
    )
    before = {k: v.clone() for k, v in create_backbone("minilm").body.state_dict().items()}
    result = run(config, log=lambda line: None)
    after = result.model.body.state_dict()
    assert _changed_groups(before, after) == trained
    vocab = "encoder.embeddings.word_embeddings.weight"  # frozen in classification fine-tuning
    assert torch.equal(before[vocab], after[vocab])
    assert set(result.report["history"][-1]["stage"]) == {"head", *trained}  # no frozen group listed
    assert result.report["validation"]["accuracy"] >= 0.75
    assert (out / "checkpoint.safetensors").is_file()


def test_image_backbone_on_text_is_a_clear_error(data) -> None:
    code, _ = _cli(
        ["train", str(data["train"]), "--backbone", "efficientnet_lite0", "--text-column", "review"]
    )
    assert code == 2


def test_missing_column_is_a_one_line_cli_error(data, capsys) -> None:
    assert main(["train", str(data["train"])]) == 2
    err = capsys.readouterr().err
    assert "no column 'text'" in err and "'review', 'sentiment'" in err and err.count("\n") == 1


def test_mask_tokens_follows_bert(minilm) -> None:
    from graft.training.adapt_lm import mask_tokens

    tok = minilm.tokenizer
    ids = torch.tensor(tok(["word " * 200] * 20, truncation=True, max_length=200)["input_ids"])
    inputs, labels = mask_tokens(ids, tok, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert 0.13 < chosen.float().mean() < 0.17
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] and [SEP] are never masked
    assert torch.equal(labels[chosen], ids[chosen])
    masked_share = (inputs[chosen] == tok.mask_token_id).float().mean()
    assert 0.75 < masked_share < 0.85


def test_adapt_lm_updates_the_encoder_before_classification(data) -> None:
    config = TrainConfig(
        data=str(data["train"]),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        adapt_lm=1,
        out=str(data["root"] / "adapted"),
    )
    before = create_backbone("minilm").body.state_dict()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(data["root"] / "cache"))
        result = run(config, log=lambda line: None)
    after = result.model.body.state_dict()
    assert set(after) == set(before)  # the MLM head is not part of the bundle
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[key], after[key])
    adapted = result.report["adapt_lm"]
    assert adapted["epochs"] == 1 and adapted["history"][0]["mlm_loss"] > 0
    assert not result.report["timing"]["feature_cache_hit"]  # adapted features are not the pretrained ones


def test_small_text_datasets_get_more_epochs() -> None:
    from graft.modalities import get_modality
    from graft.training.recipes import finetune_epochs

    text, image = get_modality("text"), get_modality("image")
    config = TrainConfig(data="x.csv", strategy="finetune")
    assert finetune_epochs(config, text, "finetune", 4906, 32) == 2  # 154 steps an epoch: the default 2
    assert finetune_epochs(config, text, "finetune", 500, 32) == 19  # at least 300 updates
    assert finetune_epochs(config, text, "finetune", 40, 32) == 20  # capped
    assert finetune_epochs(replace(config, epochs=1), text, "finetune", 40, 32) == 1  # --epochs wins
    assert finetune_epochs(config, image, "finetune", 40, 32) == 5  # images: no minimum of updates


def test_eval_cli_on_a_text_table(linear_run, data) -> None:
    code, out = _cli(["eval", str(linear_run.run_dir), str(data["test"]), "--json"])
    assert code == 0
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["n"] == 30 and metrics["accuracy"] >= 0.9


TREC6 = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "trec6"


@pytest.mark.slow
@pytest.mark.skipif(not TREC6.is_dir(), reason="the TREC-6 copy in ../shared/data/text is absent")
def test_trec6_linear_probe_on_the_real_data(tmp_path) -> None:
    """The packaged encoder's frozen features separate TREC-6's question types well (about a minute)."""
    config = TrainConfig(
        data=str(TREC6 / "train.csv"),
        test=str(TREC6 / "test.csv"),
        strategy="linear",
        out=str(tmp_path / "run"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
        result = run(config, log=lambda line: None)
    assert result.report["data"]["train"] == 4906 and result.report["data"]["test"] == 500
    assert result.report["test"]["accuracy"] >= 0.8


def test_a_local_model_folder_is_a_backbone(minilm, tmp_path) -> None:
    folder = tmp_path / "my-encoder"
    minilm.body.encoder.save_pretrained(str(folder))
    minilm.tokenizer.save_pretrained(str(folder))
    local = create_backbone(str(folder))
    assert local.source == "local" and local.modality == "text"
    assert [g for g, _ in local.groups] == [g for g, _ in minilm.groups]
    ids = torch.tensor(minilm.tokenizer(["same weights, same features"])["input_ids"])
    local.body.eval()
    minilm.body.eval()
    with torch.inference_mode():
        assert torch.allclose(local.body(ids), minilm.body(ids), atol=1e-5)
