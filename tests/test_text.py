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
from conftest import BAD, GOOD, NOUNS, spy_on_training_loops, write_reviews
from safetensors.torch import load_file

pytest.importorskip("transformers", reason="text needs the `text` extra")

import graft  # noqa: E402
from graft.backbones import BackboneError, create_backbone  # noqa: E402
from graft.cli import main  # noqa: E402
from graft.config import TrainConfig  # noqa: E402
from graft.modalities.text_batches import bucketed_order  # noqa: E402
from graft.runner import RunResult, run  # noqa: E402
from graft.training import finetune, probe  # noqa: E402
from graft.training.checkpoint import Checkpointer  # noqa: E402


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
        "train": write_reviews(root / "train.csv", 80, 0),
        "test": write_reviews(root / "test.csv", 30, 1),
        "root": root,
    }


def _linear_config(data: dict[str, Path], out: Path, **changes) -> TrainConfig:
    config = TrainConfig(
        data=str(data["train"]),
        test=str(data["test"]),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        epochs=30,  # not stretched to 500 head steps: the cost is per-epoch evaluation
        out=str(out),
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def linear_run(data):
    config = _linear_config(data, data["root"] / "linear")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(data["root"] / "cache"))
        return run(config, log=lambda line: None)


def _tuned_config(data: dict[str, Path], strategy: str, train_groups: int | None, out: Path) -> TrainConfig:
    return TrainConfig(
        data=str(data["train"]),
        text_column="review",
        label_column="sentiment",
        strategy=strategy,
        epochs=2,
        batch_size=16,
        lr=1e-3,  # 10 steps in all: a high rate, so that a working loop visibly learns
        train_groups=train_groups,
        out=str(out),
        keep_checkpoint=True,  # _last_epoch_body reads it
    )


@pytest.fixture(scope="module")
def tuned(data):
    """(strategy, train_groups) -> its fine-tuning run on the training table, each run once."""
    runs: dict[tuple[str, int | None], RunResult] = {}

    def get(strategy: str, train_groups: int | None = None) -> RunResult:
        if (strategy, train_groups) not in runs:
            out = data["root"] / f"{strategy}-{train_groups}"
            config = _tuned_config(data, strategy, train_groups, out)
            runs[strategy, train_groups] = run(config, log=lambda line: None)
        return runs[strategy, train_groups]

    return get


def _last_epoch_body(run_dir: Path) -> dict[str, torch.Tensor]:
    """The encoder's weights after the last epoch (checkpoint.safetensors), whichever epoch was kept."""
    saved = load_file(str(run_dir / "checkpoint.safetensors"))
    return {k.removeprefix("model.body."): v for k, v in saved.items() if k.startswith("model.body.")}


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


def test_feature_layers_concatenate_the_last_layers_with_the_last_layer_last(minilm) -> None:
    """--feature-layers N: each of the last N hidden states pooled (padding ignored), side by side;
    the last `hidden` columns are the one-layer features exactly."""
    from graft.backbones._text import TextEncoder

    texts = ["a short text", "a somewhat longer text here"]
    ids = torch.tensor(minilm.tokenizer(texts, padding=True)["input_ids"])
    four = TextEncoder(minilm.body.encoder, minilm.body.pad_id, "mean", layers=4).eval()
    with torch.inference_mode():
        one, many = minilm.body.eval()(ids), four(ids)
        padded = four(torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1))
    assert one.shape == (2, 384) and many.shape == (2, 4 * 384)
    torch.testing.assert_close(many[:, -384:], one, atol=1e-5, rtol=0)
    assert not torch.allclose(many[:, :384], one, atol=1e-2)  # an earlier layer, not a copy
    torch.testing.assert_close(padded, many, atol=1e-5, rtol=0)


def test_gpu_batches_pad_to_multiples_of_8_within_the_truncation_length_and_cpu_ones_do_not() -> None:
    """Padding (ignored by the encoder, above) rounded up for a GPU's tensor cores and fewer shapes."""
    from graft.modalities.text_batches import Padding

    ids = [torch.arange(1, 6), torch.arange(1, 4)]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object: no GPU needed
    assert Padding(0, 128)(ids, cpu).shape == (2, 5)
    batch = Padding(0, 128)(ids, cuda)
    assert batch.shape == (2, 8) and batch[:, 5:].eq(0).all() and batch[0, :5].tolist() == [1, 2, 3, 4, 5]
    assert Padding(0, 6)(ids, cuda).shape == (2, 5)  # 8 would pass the truncation length
    assert Padding(0, 128)([torch.arange(1, 17)], cuda).shape == (1, 16)


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


@pytest.mark.precision
def test_text_bundle_round_trip(tuned, minilm, monkeypatch) -> None:
    """A fine-tuned run's bundle, loaded with the packaged encoder hidden (so everything comes from
    the run folder: weights, encoder config, tokenizer), gives the in-memory model's probabilities
    to 1e-5 and its labels."""
    result = tuned("finetune")
    run_dir = result.run_dir
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert not list(run_dir.rglob("*.pkl")) and not list(run_dir.rglob("*.bin"))
    texts = ["what a superb film", "the plot was dreadful", "the acting was lovely and so was the story"]
    max_length = result.report["preprocessing"]["max_length"]
    model = result.model.eval()
    ids = [
        torch.tensor(minilm.tokenizer([t], truncation=True, max_length=max_length)["input_ids"])
        for t in texts
    ]
    with torch.inference_mode():  # one text at a time: no padding involved on this side
        expected = torch.cat([model(x).softmax(1) for x in ids]).numpy()
    from graft.backbones import _text

    monkeypatch.setattr(_text, "packaged_minilm_folder", lambda: None)
    with pytest.raises(BackboneError, match="packaged model"):
        create_backbone("minilm")  # the packaged encoder really is out of reach now
    loaded = graft.load(run_dir, device="cpu", precision="fp32")
    proba = loaded.predict_proba(texts)
    np.testing.assert_allclose(proba, expected, atol=1e-5, rtol=0)
    assert loaded.predict(texts) == [loaded.classes_[i] for i in expected.argmax(1)]
    assert loaded.predict(texts[:2]) == ["pos", "neg"]
    saved = load_file(str(run_dir / "model.safetensors"))
    assert set(saved) == set(loaded.model.state_dict())


def test_auto_offers_four_layers_only_while_their_features_fit_the_memory_cap(minilm) -> None:
    """--feature-layers auto: 1 or 4 layers up to about 170,000 texts of MiniLM's 4 x 384 float32
    features (1 GiB); beyond, the last layer alone, as before; a number is no choice at all."""
    from graft.modalities.text import TextModality

    text, auto = TextModality(), TrainConfig(data="x.csv")
    assert text.feature_layer_choices(auto, minilm, 170_000) == (1, 4)
    assert text.feature_layer_choices(auto, minilm, 180_000) == ()
    assert text.feature_layer_choices(replace(auto, feature_layers="4"), minilm, 100) == ()


def test_the_time_budget_looks_for_the_probes_four_layer_features(minilm) -> None:
    """Under --time-budget, whether extraction is ahead is asked of the features the probe extracts:
    under auto the 4-layer ones (they serve both choices); the body is left on its last layer."""
    from types import SimpleNamespace

    from graft.modalities.text import TextModality
    from graft.training import subset

    job = SimpleNamespace(
        modality=TextModality(), config=TrainConfig(data="x.csv"), backbone=minilm, prep=minilm.preprocessing
    )
    assert subset._probe_prep(job, 1000).layers == 4
    assert minilm.body.layers == 1 and minilm.num_features == 384
    job.config = replace(job.config, feature_layers="1")
    assert subset._probe_prep(job, 1000) is job.prep


def test_the_probe_tries_one_and_four_layers_and_says_which_it_kept(linear_run) -> None:
    """--feature-layers auto (the default): a probe on the last layer and one on the last four, the
    scores and the choice in the plan's notes, and the bundle's preprocessing and feature width
    record the kept choice."""
    report = linear_run.report
    [note] = [n for n in report["plan"]["notes"] if n.startswith("probe features")]
    shown = r"the last 1 layer\(s\): [0-9.]+, the last 4 layer\(s\): [0-9.]+"
    assert re.search(shown + r"; the probe keeps the last [14] layer", note)
    kept = report["preprocessing"]["layers"]
    assert kept in (1, 4) and f"keeps the last {kept} layer(s) " in note
    assert report["backbone"]["num_features"] == 384 * kept


@pytest.mark.parametrize(("strategy", "layers"), [("linear", 4), ("finetune", 1)])
def test_four_kept_layers_are_the_probes_and_fine_tuning_trains_on_the_last_layer(
    data, tmp_path, monkeypatch, strategy, layers
) -> None:
    """The probe's choice (forced to 4 here) is the model when the probe is; fine-tuning after it
    (LP-FT: --freeze-epochs 1) starts from the probe on the last layer and trains on that."""
    from graft.training import strategies

    monkeypatch.setattr(strategies, "feature_layers_kept", lambda scores, noise: max(scores))
    config = _tuned_config(data, strategy, None, tmp_path / strategy)
    config = replace(config, epochs=30 if strategy == "linear" else 1, freeze_epochs=1, keep_checkpoint=False)
    lines: list[str] = []
    report = run(config, log=lines.append).report
    assert report["preprocessing"]["layers"] == layers and report["backbone"]["num_features"] == 384 * layers
    assert any("the probe keeps the last 4 layer(s)" in note for note in report["plan"]["notes"])
    reverted = any(line.startswith("fine-tuning: on the last 1 layer(s)") for line in lines)
    assert reverted == (strategy == "finetune")
    loaded = graft.load(report["run_dir"], device="cpu", precision="fp32")
    assert loaded.predict(["what a superb film", "the plot was dreadful"]) == ["pos", "neg"]


@pytest.mark.parametrize("strategy", ["auto", "finetune"])
def test_a_fine_tuned_model_below_the_four_layer_probe_gives_way_to_it(
    data, tmp_path, monkeypatch, strategy
) -> None:
    """Fine-tuning on the last layer, measured against the one-layer probe (reported at 0 here, so
    keep-best keeps a fine-tuned epoch), wrecked by a learning rate far too high: the four-layer
    probe, better on validation, is what the run keeps, on the pretrained body (its predictions are
    right again). auto: the probe is a candidate and the head starts afresh; finetune with
    --freeze-epochs 1: fine-tuning continues from the probe."""
    from graft.training import strategies

    monkeypatch.setattr(strategies, "feature_layers_kept", lambda scores, noise: max(scores))
    monkeypatch.setattr(strategies, "MIN_PER_CLASS_TO_FINETUNE", 1)  # auto fine-tunes 36 a class
    monkeypatch.setattr(strategies, "has_headroom", lambda headroom: (True, 0.0))  # after a perfect probe
    probe_once = probe._probe_once

    def one_layer_reported_worse(job, head, **kwargs):
        outcome = probe_once(job, head, **kwargs)
        if "last 1 layer" in kwargs["phase"]:
            outcome.result.val = {**outcome.result.val, job.task.monitor: 0.0}
        return outcome

    monkeypatch.setattr(probe, "_probe_once", one_layer_reported_worse)
    config = replace(
        _tuned_config(data, strategy, None, tmp_path / "wrecked"),
        test=str(data["test"]), lr=0.5, freeze_epochs=1 if strategy == "finetune" else None,
        keep_checkpoint=False,
    )  # fmt: skip
    lines: list[str] = []
    report = run(config, log=lines.append).report
    assert report["strategy"] == "finetune" and report["history"][-1]["epoch"] >= 1
    assert any(line.startswith("the probe on the last 4 layer(s) is kept") for line in lines)
    assert report["kept"]["epoch"] == 0 and "the last 4 layer(s)" in report["kept"]["reason"]
    assert report["preprocessing"]["layers"] == 4 and report["backbone"]["num_features"] == 4 * 384
    assert report["plan"]["preprocessing"]["layers"] == 4
    assert report["validation"]["accuracy"] >= 0.9 and report["test"]["accuracy"] >= 0.9
    loaded = graft.load(report["run_dir"], device="cpu", precision="fp32")
    assert loaded.predict(["what a superb film", "the plot was dreadful"]) == ["pos", "neg"]


def test_a_four_layer_probe_round_trips_through_the_bundle_and_onnx(data, tmp_path) -> None:
    """--feature-layers 4: the run trains on 1,536 features; the bundle rebuilds the same encoder
    (its probabilities to 1e-5) and the ONNX export keeps parity."""
    from graft.export import export

    result = run(_linear_config(data, tmp_path / "four", feature_layers="4"), log=lambda line: None)
    assert result.report["preprocessing"]["layers"] == 4 and result.report["backbone"]["num_features"] == 1536
    assert result.report["test"]["accuracy"] >= 0.9
    texts = ["what a superb film", "the plot was dreadful", "the acting was lovely and so was the story"]
    loaded = graft.load(result.run_dir, device="cpu", precision="fp32")
    assert loaded.predict(texts[:2]) == ["pos", "neg"]
    exported = export(result.run_dir, "onnx", tmp_path / "model.onnx")
    assert exported["max_abs_diff"] < exported["tolerance"]
    onnx = graft.load(tmp_path / "model.onnx")
    np.testing.assert_allclose(onnx.predict_proba(texts), loaded.predict_proba(texts), atol=1e-4)


def test_predict_cli_texts_and_input_file(linear_run, data) -> None:
    code, out = _cli(
        ["predict", str(linear_run.run_dir), "a lovely story", "--input", str(data["test"]), "--json"]
    )
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])["predictions"]
    assert len(rows) == 31 and rows[0]["input"] == "a lovely story"
    assert rows[0]["predictions"][0]["label"] == "pos"


def test_second_linear_run_hits_the_feature_cache(linear_run, data) -> None:
    config = TrainConfig(
        data=str(data["train"]),
        text_column="review",
        label_column="sentiment",
        strategy="linear",
        lr=3e-3,
        epochs=2,  # the cache is tested, not the head: no need for 500 steps
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
def test_finetune_and_gradual_train_the_encoder(tuned, minilm, strategy, train_groups, trained) -> None:
    """After the last epoch (its checkpoint) exactly the groups meant to train have changed, never
    the token embeddings; the kept model learnt the easy reviews."""
    result = tuned(strategy, train_groups)
    before = minilm.body.state_dict()
    after = _last_epoch_body(result.run_dir)
    assert _changed_groups(before, after) == trained
    vocab = "encoder.embeddings.word_embeddings.weight"  # frozen in classification fine-tuning
    assert torch.equal(before[vocab], after[vocab])
    assert set(result.report["history"][-1]["stage"]) == {"head", *trained}  # no frozen group listed
    assert result.report["validation"]["accuracy"] >= 0.75


def _epoch_lines(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("epoch ")]


def test_text_resume_ends_with_the_weights_of_an_uninterrupted_run(tuned, tmp_path) -> None:
    """Text fine-tuning interrupted after epoch 1 of 2, then --resume: the last epoch's weights, the
    kept model and the history equal the uninterrupted run's exactly."""
    straight = tuned("finetune")
    config = replace(straight.job.config, out=str(tmp_path / "resumed"))
    real_save = Checkpointer.save

    def save_then_interrupt(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(config, log=lambda line: None)
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["epoch"] == 1
    lines: list[str] = []
    resumed = run(replace(config, resume=True), log=lines.append)
    assert _epoch_lines(lines) == ["2/2"]  # only the last epoch was trained again
    for name in ("checkpoint.safetensors", "model.safetensors"):
        a = load_file(str(straight.run_dir / name))
        b = load_file(str(resumed.run_dir / name))
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name
    keys = ("epoch", "stage", "train_loss", "val_loss", "lr")
    assert [{k: r[k] for k in keys} for r in resumed.report["history"]] == [
        {k: r[k] for k in keys} for r in straight.report["history"]
    ]


@pytest.mark.timing
def test_text_time_budget_is_kept(data, minilm, tmp_path, monkeypatch) -> None:
    """--time-budget on text, as ratios of the budget (robust to a busy machine): training stops by
    the deadline (15% for the last step and its checkpoint), the whole run overruns it by at most
    50% (writing a 90 MB bundle and checkpoint is a fixed ~1 s, large against so short a budget)
    and at least 60% of it trains (the LR's annealing is tested on images, tests/test_finetune.py).
    One-off process costs are paid first (imports, the first step's kernel set-up)."""
    import matplotlib.pyplot  # noqa: F401

    ids = torch.tensor(minilm.tokenizer(["warm up"] * 4)["input_ids"])
    minilm.body.train()
    minilm.body(ids).sum().backward()
    minilm.body.zero_grad(set_to_none=True)
    minilm.body.eval()
    loop_ends = spy_on_training_loops(monkeypatch)
    budget = 8.0  # the fixed costs (bundle, checkpoint) weigh less against a longer budget
    config = replace(
        _tuned_config(data, "finetune", None, tmp_path / "run"), epochs=None, lr=None, time_budget=budget
    )
    lines: list[str] = []
    started = time.perf_counter()
    result = run(config, log=lines.append)
    run_ratio = (time.perf_counter() - started) / budget
    loop_ratio = (loop_ends[-1] - started) / budget
    # the step that crosses the deadline, its epoch's evaluation and checkpoint write still run:
    # on an 8 s budget and busy cores that is up to a sixth of it
    assert loop_ratio <= 1.3, f"training ran {loop_ratio:.2f}x the budget"
    assert run_ratio <= 1.6, f"the run took {run_ratio:.2f}x the budget"
    assert any(line.startswith("time budget 8s") for line in lines)
    assert loop_ratio >= 0.6, f"training used only {loop_ratio:.2f} of the budget"
    assert result.report["history"] and result.report["config"]["time_budget"] == budget


def test_image_backbone_on_text_is_a_clear_error(data, capsys) -> None:
    """An image backbone on a text table: exit 2 and one line saying so (not another error's exit 2:
    the table's columns are right)."""
    argv = ["train", str(data["train"]), "--backbone", "efficientnet_lite0"]
    code = main([*argv, "--text-column", "review", "--label-column", "sentiment"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.fullmatch(
        r"graft: error: --backbone efficientnet_lite0 is an? image model but \S*train\.csv holds texts;"
        r" `graft backbones` lists both kinds\n",
        err,
    ), err


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
        epochs=2,  # the adaptation is tested, not the head: no need for 500 steps
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
    from graft.training.timing import finetune_epochs

    text, image = get_modality("text"), get_modality("image")
    config = TrainConfig(data="x.csv", strategy="finetune")
    assert finetune_epochs(config, text, "finetune", 4906, 32) == 2  # 154 steps an epoch: the default 2
    assert finetune_epochs(config, text, "finetune", 500, 32) == 19  # at least 300 updates
    assert finetune_epochs(config, text, "finetune", 40, 32) == 20  # capped
    assert finetune_epochs(replace(config, epochs=1), text, "finetune", 40, 32) == 1  # --epochs wins
    assert finetune_epochs(config, image, "finetune", 40, 32) == 4  # images: no minimum of updates


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


@pytest.mark.slow  # ~10 s; tests/test_keep_best.py checks the candidate's restore in the default suite
def test_auto_on_text_runs_the_probe_first_and_keeps_it_when_fine_tuning_is_worse(
    data, tmp_path, monkeypatch
):
    """Text fine-tuning has no head-only phase, so auto's probe is a candidate: fine-tuning starts
    from the initial head (not the probe's) and the probe comes back if no epoch beats it. Here
    fine-tuning is made to fail (--lr 3: the weights blow up) and is told to run regardless."""
    from graft.training import strategies

    monkeypatch.setattr(strategies, "choose_strategy", lambda *a, **k: ("finetune", "forced by the test"))
    starts: list[torch.Tensor] = []
    real_fit = finetune.fit

    def spy(model, *args, **kwargs):
        if hasattr(model, "body"):  # fine-tuning (the probe fits the head alone)
            starts.append(model.head.fc.weight.detach().clone())
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(finetune, "fit", spy)
    config = replace(
        _tuned_config(data, "auto", None, tmp_path / "run"), epochs=1, lr=3.0, keep_checkpoint=False
    )
    result = run(config, log=lambda line: None)
    report = json.loads((result.run_dir / "report.json").read_text())
    probe_row = report["history"][0]
    assert probe_row["epoch"] == 0 and report["kept"]["epoch"] == 0
    assert report["validation"]["accuracy"] == pytest.approx(probe_row["val_accuracy"])
    assert probe_row["val_accuracy"] > max(row["val_accuracy"] for row in report["history"][1:])
    # fine-tuning (the last fit on the whole model; auto's step timing comes first) started from a
    # fresh head, not from the probe's trained one
    assert not torch.allclose(starts[-1], result.model.head.fc.weight.detach())
    # the bundle predicts what was kept: the probe
    bundle = graft.load(result.run_dir)
    with open(data["train"], newline="") as f:
        texts = [row["review"] for row in csv.DictReader(f)][:20]
    proba = bundle.predict_proba(texts)
    assert proba.shape == (20, 2) and np.isfinite(proba).all()


# --------------------------------------------------------------------------- sentence pairs
def test_a_sentence_pair_is_encoded_as_the_tokenizers_pair(minilm) -> None:
    """Two texts in one example: [CLS] a [SEP] b [SEP] with pairs on, truncated longest first so
    the second text keeps its tokens when the first is long; joined by a newline with pairs off
    (bundles from before pairs)."""
    from graft.modalities.text_batches import tokenize

    tok = minilm.tokenizer
    long_first, second = " ".join(["word"] * 40), "a short hypothesis"
    for pair in [(long_first, second), [long_first, second]]:
        (ids,) = tokenize(tok, [pair], 24, pairs=True)
        expected = tok(long_first, second, truncation="longest_first", max_length=24)["input_ids"]
        assert ids.tolist() == expected and len(expected) == 24
        assert tok.decode(ids).endswith("[SEP] a short hypothesis [SEP]")
    (joined,) = tokenize(tok, [("premise", "hypothesis")], 24, pairs=False)
    assert joined.tolist() == tok("premise\nhypothesis", truncation=True, max_length=24)["input_ids"]


def _pairs_table(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["premise", "hypothesis", "label"])
        for _ in range(n):
            word = rng.choice(GOOD + BAD)
            label = rng.choice(["agrees", "differs"])
            other = word if label == "agrees" else rng.choice([w for w in GOOD + BAD if w != word])
            writer.writerow([f"the {rng.choice(NOUNS)} was {word}", f"it was {other}", label])
    return path


def test_two_text_columns_train_predict_and_serve_as_sentence_pairs(tmp_path) -> None:
    """`--text-column premise,hypothesis`: the bundle says pairs, and a CSV row, a 2-tuple from
    Python and a ["a", "b"] pair sent to `graft serve` all give the same prediction."""
    pytest.importorskip("fastapi", reason="serve needs the `serve` extra")
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    table = _pairs_table(tmp_path / "pairs.csv", 60, 0)
    config = TrainConfig(
        data=str(table), text_column="premise,hypothesis", label_column="label", strategy="linear",
        epochs=3, out=str(tmp_path / "run"),
    )
    result = run(config, log=lambda line: None)
    assert result.report["preprocessing"]["pairs"] is True
    loaded = graft.load(result.run_dir, device="cpu", precision="fp32")
    with open(table, newline="") as f:
        rows = [(r["premise"], r["hypothesis"]) for r in csv.DictReader(f)][:5]
    from_tuples = loaded.predict_proba(rows)
    code, out = _cli(["predict", str(result.run_dir), "--input", str(table), "--json"])
    assert code == 0
    printed = json.loads(out.strip().splitlines()[-1])["predictions"][:5]
    assert [p["input"] for p in printed] == [list(r) for r in rows]
    assert [p["predictions"][0]["label"] for p in printed] == loaded.predict(rows)
    joined = loaded.predict_proba([f"{a}\n{b}" for a, b in rows])  # one text: not the same input
    assert not np.allclose(from_tuples, joined, atol=1e-4)
    client = TestClient(create_app(result.run_dir))
    answer = client.post("/predict", json={"texts": [list(r) for r in rows]})
    assert answer.status_code == 200, answer.text
    assert [p["top"][0]["label"] for p in answer.json()["predictions"]] == loaded.predict(rows)


def test_pairs_arrive_as_tuples_lists_or_array_rows_and_one_tuple_is_one_pair(minilm) -> None:
    """A DataFrame's two text columns as a 2-D array give one pair a row; a lone 2-tuple given to a
    model trained on pairs is one input; an array that is not a pair is a one-line error; an
    array of strings is not an image."""
    from graft.backbones import TextPreprocessing
    from graft.errors import DataError
    from graft.modalities import get_modality, modality_of_inputs
    from graft.modalities.text import _TextInputs

    rows = np.array([["a premise", "a hypothesis"], ["another", "one"]])
    pairs = _TextInputs(minilm.tokenizer, TextPreprocessing(pairs=True))
    assert pairs.as_list(rows) == [("a premise", "a hypothesis"), ("another", "one")]
    assert pairs.as_list(("a premise", "a hypothesis")) == [("a premise", "a hypothesis")]
    single = _TextInputs(minilm.tokenizer, TextPreprocessing())
    assert single.as_list(("one text", "another")) == ["one text", "another"]
    with pytest.raises(DataError, match=r"not an array \(3,\)"):
        pairs.as_list(np.array([["a", "b", "c"]]))
    assert modality_of_inputs(list(rows)) is get_modality("text")
    with pytest.warns(UserWarning, match="trained on sentence pairs") as said:
        assert pairs.as_list(["one text"]) == pairs.as_list(["one text"]) == ["one text"]
    assert len(said) == 1  # once per loaded model


def test_image_paths_are_images_even_when_the_text_modality_registered_first(tmp_path) -> None:
    """This module imports graft.modalities.text first; a list of image paths is still images (a
    modality that takes any string is asked last), and plain strings are texts."""
    from PIL import Image

    from graft.modalities import get_modality, modality_of_inputs

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    assert modality_of_inputs([str(path)]) is get_modality("image")
    assert modality_of_inputs(["a text"]) is get_modality("text")
