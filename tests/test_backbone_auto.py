"""`graft train --backbone auto`: the pick on the training data, then the recipe on the winner,
which reads the pick's features instead of extracting them again; the table in report.json and
report.html, the choice in graft.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graft.cli import main
from graft.modalities.image import ImageModality


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Every encode call: the backbone, how many inputs, and what for (its progress label)."""
    calls: list[tuple[str, int, str]] = []
    real = ImageModality.encode

    def counting(self, backbone, prep, sources, **options):
        calls.append((backbone.name, len(sources), str(options.get("desc", ""))))
        return real(self, backbone, prep, sources, **options)

    monkeypatch.setattr(ImageModality, "encode", counting)
    return calls


def _train(data: Path, out: Path, capsys, *extra: str) -> tuple[dict, str]:
    argv = ["train", str(data), "--backbone", "auto", "--strategy", "linear", "--val-fraction", "0.34"]
    assert main([*argv, "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text()), capsys.readouterr().out


def test_auto_picks_the_better_backbone_listed_second_and_trains_on_it(
    tiny_backbones, colours, tmp_path, capsys, monkeypatch, encoded
):
    monkeypatch.setattr(ImageModality, "packaged_backbones", ("tiny_blind", "tiny_sees"))
    report, out = _train(colours, tmp_path / "run", capsys)
    assert "backbone auto -> tiny_sees" in out and "pin it with --backbone tiny_sees" in out
    assert "online candidates" in out and "skipped: offline" in out  # one line, offline here
    pick = report["backbone_pick"]
    assert pick["chosen"] == "tiny_sees" and report["backbone"]["name"] == "tiny_sees"
    rows = {r["backbone"]: r for r in pick["candidates"]}
    assert rows["tiny_blind"]["status"] == "scored" and rows["tiny_sees"]["status"] == "chosen"
    assert rows["tiny_sees"]["linear"] > rows["tiny_blind"]["linear"]
    for row in rows.values():
        assert row["images_per_s"] and row["input_size"] == 32 and row["linear_se"] is not None
    bundle = json.loads((tmp_path / "run" / "graft.json").read_text())
    assert bundle["backbone"]["name"] == "tiny_sees" and bundle["backbone"]["picked_by"] == "auto"
    assert report["config"]["backbone"] == "auto"  # what was asked
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Backbone pick (--backbone auto)" in html and "tiny_blind" in html
    # the winner's inputs are encoded once: the pick's subset and validation, then the rest alone
    extracted = sum(n for name, n, desc in encoded if name == "tiny_sees" and "timing" not in desc)
    assert extracted == report["data"]["train"] + report["data"]["val"]
    assert "from the backbone pick's" in out  # and the run says so


def test_backbone_named_behaves_as_before(tiny_backbones, colours, tmp_path, capsys):
    argv = ["train", str(colours), "--backbone", "tiny_sees", "--strategy", "linear"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["backbone_pick"] is None and "picked_by" not in report["backbone"]
    assert "pick:" not in capsys.readouterr().out


def test_a_missing_candidate_never_fails_the_run(tiny_backbones, colours, tmp_path, capsys, monkeypatch):
    candidates = ("tiny_broken", "timm/no_such_model", "tiny_sees")
    monkeypatch.setattr(ImageModality, "packaged_backbones", candidates)
    report, out = _train(colours, tmp_path / "run", capsys)
    assert report["backbone"]["name"] == "tiny_sees"
    rows = {r["backbone"]: r for r in report["backbone_pick"]["candidates"]}
    assert rows["tiny_broken"]["why"].startswith("failed: RuntimeError")
    assert rows["timm/no_such_model"]["why"].startswith("unavailable:")


def test_auto_with_weights_or_devices_is_a_one_line_error(colours, capsys):
    assert main(["train", str(colours), "--backbone", "auto", "--weights", "w.safetensors"]) != 0
    assert "--backbone auto picks among pretrained candidates" in capsys.readouterr().err


def test_auto_under_a_time_budget_reads_the_pick_features_too(
    tiny_backbones, colours, tmp_path, capsys, monkeypatch, encoded
):
    monkeypatch.setattr(ImageModality, "packaged_backbones", ("tiny_blind", "tiny_sees"))
    report, out = _train(colours, tmp_path / "run", capsys, "--time-budget", "120")
    assert report["backbone"]["name"] == "tiny_sees"
    assert report["backbone_pick"]["per_class"] == 7  # all of the smallest class: 30 s of 120 allow it
    extracted = sum(n for name, n, desc in encoded if name == "tiny_sees" and "timing" not in desc)
    # at most the budget's timed sample more
    assert extracted <= report["data"]["train"] + report["data"]["val"] + 16


# ---------------------------------------------------------------------------- texts


def _tiny_text_encoder(name: str, seed: int):
    """A random-weight, one-layer BERT with MiniLM's tokenizer (the packaged one)."""
    import torch
    import transformers

    from graft.backbones import _text

    folder = _text.packaged_minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    encoder = transformers.BertModel(config, add_pooling_layer=False)

    def build(pretrained: bool = True, weights_path: str | None = None):
        return _text._assemble(name, "local", encoder, tokenizer, config.to_dict(), "random")

    return build


@pytest.fixture
def tiny_text_encoders(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    from graft.backbones import _registry
    from graft.backbones._registry import BackboneInfo
    from graft.backbones._text import packaged_minilm_folder

    if packaged_minilm_folder() is None:
        pytest.skip("the packaged MiniLM tokenizer is not installed (the `text` extra)")
    entries = _registry._BACKBONES.all() and _registry._BACKBONES._entries
    names = ("tiny_text_a", "tiny_text_b")
    for seed, name in enumerate(names):
        monkeypatch.setitem(entries, name, BackboneInfo(name, "local", _tiny_text_encoder(name, seed), dict))
    return names


def test_texts_pick_among_encoders_with_the_same_machinery(tiny_text_encoders, tmp_path, capsys, monkeypatch):
    from conftest import write_reviews

    from graft.modalities.text import TextModality

    monkeypatch.setattr(TextModality, "packaged_backbones", tiny_text_encoders)
    table = write_reviews(tmp_path / "reviews.csv", 60, 0)
    argv = ["train", str(table), "--text-column", "review", "--label-column", "sentiment"]
    assert main([*argv, "--backbone", "auto", "--strategy", "linear", "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = report["backbone_pick"]["candidates"]
    assert [r["backbone"] for r in rows] == list(tiny_text_encoders)
    assert all(r["status"] in {"scored", "chosen"} and r["input_size"] for r in rows)
    assert report["backbone"]["name"] == report["backbone_pick"]["chosen"] in tiny_text_encoders
    assert "hf/BAAI/bge-small-en-v1.5" in capsys.readouterr().out  # the online list, skipped offline


def test_text_auto_offline_keeps_minilm_in_one_line(monkeypatch):
    """Offline, MiniLM is the only text candidate: auto keeps it without a pick, and says so."""
    from graft import pick
    from graft.config import TrainConfig
    from graft.modalities import get_modality

    built: list[str] = []
    monkeypatch.setattr("graft.backbones.create_backbone", lambda name: built.append(name) or name)
    lines: list[str] = []
    config = TrainConfig(data="x.csv", backbone="auto", device="cpu")
    picked = pick.pick_for_training(config, get_modality("text"), None, pick.Clock(None, 0.0), lines.append)
    assert picked.result["chosen"] == "minilm" and built == ["minilm"] and picked.known is None
    assert lines[-1].startswith("backbone auto -> minilm: minilm is the only text candidate here (offline")


def test_when_no_candidate_fits_the_pick_share_the_default_is_trained(
    tiny_backbones, colours, tmp_path, capsys, monkeypatch
):
    from graft import pick

    monkeypatch.setattr(ImageModality, "packaged_backbones", ("tiny_blind", "tiny_sees_big"))
    monkeypatch.setattr(ImageModality, "default_backbone", "tiny_sees")
    monkeypatch.setattr(pick, "_speed", lambda *a: 0.01)  # hours for 36 images: past any share
    report, out = _train(colours, tmp_path / "run", capsys, "--time-budget", "60")
    assert report["backbone"]["name"] == "tiny_sees" and report["backbone_pick"]["candidates"] == []
    assert "backbone auto -> tiny_sees: graft pick: no candidate could be scored" in out


def test_the_python_door_picks_as_the_cli_does_and_trains_as_the_named_backbone(
    tiny_backbones, colours, tmp_path, capsys, monkeypatch
):
    import graft

    monkeypatch.setattr(ImageModality, "packaged_backbones", ("tiny_blind", "tiny_sees"))
    argv = ["train", str(colours), "--backbone", "tiny_sees", "--strategy", "linear"]
    assert main([*argv, "--val-fraction", "0.34", "--out", str(tmp_path / "named")]) == 0
    named = json.loads((tmp_path / "named" / "report.json").read_text())
    cli, _ = _train(colours, tmp_path / "cli", capsys)
    model = graft.Classifier(backbone="auto", strategy="linear", val_fraction=0.34, out=str(tmp_path / "py"))
    model.fit(str(colours))
    python = json.loads((tmp_path / "py" / "report.json").read_text())
    assert python["backbone"]["name"] == cli["backbone"]["name"] == "tiny_sees"
    assert [r["backbone"] for r in python["backbone_pick"]["candidates"]] == ["tiny_blind", "tiny_sees"]
    accuracies = {r["validation"]["accuracy"] for r in (named, cli, python)}
    assert len(accuracies) == 1  # the same answers through every door, and as the named backbone


def test_a_given_image_size_applies_to_every_candidate_and_to_the_flag(
    tiny_backbones, colours, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(ImageModality, "packaged_backbones", ("tiny_blind", "tiny_sees"))
    report, out = _train(colours, tmp_path / "run", capsys, "--image-size", "40")
    assert {r["input_size"] for r in report["backbone_pick"]["candidates"]} == {40}
    assert report["backbone_pick"]["flag"] == "--backbone tiny_sees --image-size 40"
    assert "pin it with --backbone tiny_sees --image-size 40" in out
