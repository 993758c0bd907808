"""Tests for graft.heads: head specs, the layers they build, and feature standardisation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from graft.heads import FeatureNorm, GraftModel, HeadSpec, build_head, upgrade_head_keys


def test_parse_linear():
    """'linear' is a single Linear layer spec, keeping the dropout it is given."""
    spec = HeadSpec.parse("linear")
    assert spec == HeadSpec("linear", (), 0.0)
    assert str(spec) == "linear"
    assert HeadSpec.parse(" linear ", dropout=0.2).dropout == 0.2


def test_parse_mlp():
    """'mlp:4096,4096' gives two hidden widths and round-trips through str()."""
    spec = HeadSpec.parse("mlp:4096,4096", dropout=0.5)
    assert spec == HeadSpec("mlp", (4096, 4096), 0.5)
    assert str(spec) == "mlp:4096,4096"
    assert HeadSpec.parse(str(spec), 0.5) == spec
    assert HeadSpec.parse("mlp").hidden == (512,)  # default width


def test_linear_head_layers():
    """A linear head is FeatureNorm + Linear(in, classes); dropout goes in front of the Linear."""
    head = build_head(HeadSpec.parse("linear"), 32, 5)
    assert [type(m) for m in head.layers()] == [FeatureNorm, nn.Linear]
    assert (head.fc.in_features, head.fc.out_features) == (32, 5)
    assert sorted(head.state_dict()) == ["fc.bias", "fc.weight", "norm.mean", "norm.std"]
    head = build_head(HeadSpec.parse("linear", dropout=0.3), 32, 5)
    assert [type(m) for m in head.layers()] == [FeatureNorm, nn.Dropout, nn.Linear]
    assert head.hidden[0].p == 0.3


def test_mlp_head_is_vggs_classifier():
    """mlp:4096,4096 with dropout 0.5 has VGG's Linear-ReLU-Dropout x2 + Linear classifier layout."""
    head = build_head(HeadSpec.parse("mlp:4096,4096", dropout=0.5), 512, 7)
    assert [type(m) for m in head.layers()] == [
        FeatureNorm,
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.Dropout,
        nn.Linear,
    ]
    widths = [(m.in_features, m.out_features) for m in head.layers() if isinstance(m, nn.Linear)]
    assert widths == [(512, 4096), (4096, 4096), (4096, 7)]
    assert all(m.p == 0.5 for m in head.layers() if isinstance(m, nn.Dropout))
    head.eval()
    with torch.no_grad():
        assert head(torch.randn(3, 512)).shape == (3, 7)


def test_mlp_head_without_dropout_has_no_dropout_layers():
    """Dropout 0 adds no Dropout layers."""
    head = build_head(HeadSpec.parse("mlp:16"), 8, 2)
    assert [type(m) for m in head.layers()] == [FeatureNorm, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("spec", ["linear", "mlp:16,8"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_numbered_head_of_format_2_loads_into_the_named_parts(spec, dropout):
    """Bundles up to format 2 saved the head as an nn.Sequential [FeatureNorm, *hidden, Linear]:
    its numbered keys are renamed to norm / hidden / fc and give the same outputs."""
    torch.manual_seed(0)
    head = build_head(HeadSpec.parse(spec, dropout), 8, 3).eval()
    head.norm.fit(torch.randn(20, 8))
    old = nn.Sequential(*[copy.deepcopy(m) for m in head.layers()]).eval()
    state = {f"head.{k}": v for k, v in old.state_dict().items()} | {"body.w": torch.ones(1)}
    upgraded = upgrade_head_keys(state)
    assert upgraded["body.w"] is state["body.w"]
    fresh = build_head(HeadSpec.parse(spec, dropout), 8, 3).eval()
    fresh.load_state_dict({k.removeprefix("head."): v for k, v in upgraded.items() if k.startswith("head.")})
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), old(x))


@pytest.mark.parametrize("text", ["", "conv", "linear:5", "mlp:a,b", "mlp:4096;4096", "MLP:10", "mlp:1.5"])
def test_bad_specs_raise_value_error(text):
    """Anything but 'linear' or 'mlp:INT,...' is a ValueError naming the bad spec."""
    with pytest.raises(ValueError, match="bad --head"):
        HeadSpec.parse(text)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("text", ["mlp:0", "mlp:-5"])
def test_non_positive_widths_raise_value_error(text):
    """A hidden width must be a positive integer."""
    with pytest.raises(ValueError):
        build_head(HeadSpec.parse(text), 8, 2)


def test_feature_norm_standardises_training_features():
    """After fit, the training features have mean ~0 and each column a bounded scale."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(200, 6, generator=gen) * torch.tensor([1.0, 10, 100, 0.1, 5, 50]) + 7
    norm = FeatureNorm(6).fit(features)
    out = norm(features)
    assert out.mean(0).abs().max() < 1e-4
    assert torch.all(out.std(0) <= 1.0 + 1e-4)
    assert norm.std.min() > 0


def test_feature_norm_does_not_blow_up_a_constant_feature():
    """A feature constant on the training images stays finite and bounded on a new image."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(20, 4, generator=gen)
    features[:, 2] = 3.0  # e.g. a blank background: no variance in training
    norm = FeatureNorm(4).fit(features)
    new = torch.randn(1, 4, generator=gen)
    new[0, 2] = 3.0 + 5.0  # the new image differs there by a few typical standard deviations
    out = norm(new)
    assert torch.isfinite(out).all()
    assert out.abs().max() < 20  # plain 1/std would give ~5e6


def test_feature_norm_single_row_and_state():
    """One training row (no variance to estimate) gives one finite scale for every feature; the
    statistics are buffers saved in the state dict."""
    norm = FeatureNorm(3).fit(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.isfinite(norm.std).all() and norm.std.min() >= 1.0
    assert torch.all(norm.std == norm.std[0])
    assert torch.equal(norm(torch.tensor([[1.0, 2.0, 3.0]])), torch.zeros(1, 3))
    assert set(norm.state_dict()) == {"mean", "std"}
    assert not list(norm.parameters())  # never trained


def test_graft_model_flattens_body_output():
    """GraftModel feeds the body's output, flattened, to the head."""
    body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1))  # (N, 4, 1, 1)
    model = GraftModel(body, build_head(HeadSpec(), 4, 3)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
