"""graft's image backbones as Keras 3 layers, on Keras' torch backend (no TensorFlow).

    import graft.keras                       # selects the torch backend unless KERAS_BACKEND is set
    import keras
    base_model = graft.keras.backbone("efficientnet_lite0", input_shape=(32, 32, 3), image_size=96)
    base_model.trainable = False             # frozen: BatchNorm in inference mode, no backward pass
    model = keras.Sequential([base_model, keras.layers.GlobalAveragePooling2D(), ...])

The seed article's Keras recipe then runs as written. The backbone takes NHWC images with values in
0-255 (uint8 or float, as `keras.datasets.cifar10.load_data()` gives them), does the backbone's own
preprocessing inside (resize to `image_size`, scale, normalise with its mean and std) and returns
its last feature map, NHWC (a 1x1 map for a network that only exposes pooled features).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Preprocessing, create_backbone
from .errors import ConfigError

EXTRA_HINT = "pip install 'graft-learn[keras]'"
BN_CHOICES = ("frozen", "trainable")


def _keras_on_torch() -> Any:
    """Keras with the torch backend, or a one-line ConfigError saying what to change."""
    chosen = os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras reads it on first import
    if chosen != "torch":
        raise ConfigError(
            f"graft.keras runs on Keras' torch backend but KERAS_BACKEND={chosen!r}: set KERAS_BACKEND=torch"
        )
    try:
        import keras
    except ImportError:
        raise ConfigError(f"graft.keras needs the `keras` extra: {EXTRA_HINT}") from None
    if keras.backend.backend() != "torch":  # keras was imported before graft.keras, with another backend
        raise ConfigError(
            f"Keras is running on {keras.backend.backend()!r}: import graft.keras before keras, or set "
            "KERAS_BACKEND=torch"
        )
    return keras


keras = _keras_on_torch()


def _feature_map(body: nn.Module) -> Any:
    """The body's last feature map, NCHW: timm's `forward_features`, torchvision's `features`,
    else its pooled output as a 1x1 map."""
    if callable(getattr(body, "forward_features", None)):
        return body.forward_features
    features = getattr(body, "features", None)
    if isinstance(features, nn.Module):
        return features
    return lambda x: body(x).flatten(1)[:, :, None, None]


class GraftBackbone(keras.layers.Layer):
    """A graft image backbone as a Keras layer: NHWC images in 0-255 -> NHWC feature map.

    `trainable = False` freezes it: its weights leave the optimiser, it runs without gradients, and
    BatchNorm (and any dropout) stays in inference mode, as Keras' transfer-learning guide requires.
    Unfrozen, its weights train; with `bn="frozen"` (the default, graft's `--bn frozen`)
    BatchNorm keeps normalising with its pretrained running statistics while its scale and shift
    train, so small fine-tuning batches do not disturb it."""

    def __init__(
        self,
        backbone_name: str,
        image_size: int | None = None,
        weights: str | None = "imagenet",
        bn: str = "frozen",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bn not in BN_CHOICES:
            raise ConfigError(f"bad bn={bn!r}: use one of {', '.join(BN_CHOICES)}")
        built = _create(backbone_name, weights)
        if not isinstance(built.preprocessing, Preprocessing):
            raise ConfigError(f"graft.keras takes image backbones; {backbone_name} is a text encoder")
        self.backbone_name, self.bn, self.weights_source = backbone_name, bn, built.weights
        self.prep = built.preprocessing.with_size(image_size)
        self.body = keras.layers.TorchModuleWrapper(built.body)  # its weights become Keras variables
        self._features = _feature_map(built.body)
        self._map_shape = self._probe_shape(built.body)

    @torch.no_grad()
    def _probe_shape(self, body: nn.Module) -> tuple[int, int, int]:
        """(height, width, channels) of the feature map, from one zero image."""
        body.eval()
        size = self.prep.input_size
        device = next(body.parameters()).device
        out = self._features(torch.zeros(1, 3, size, size, device=device))
        return int(out.shape[2]), int(out.shape[3]), int(out.shape[1])

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """NHWC 0-255 -> NCHW, resized to the backbone's input size and standardised."""
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        size = self.prep.input_size
        if tuple(x.shape[-2:]) != (size, size):
            mode = (
                self.prep.interpolation if self.prep.interpolation in ("bilinear", "bicubic") else "nearest"
            )
            smooth = mode != "nearest" and min(x.shape[-2:]) > size  # antialias when shrinking
            x = F.interpolate(x, size=(size, size), mode=mode, antialias=smooth, align_corners=False)
        mean = torch.tensor(self.prep.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.prep.std, device=x.device).view(1, 3, 1, 1) * 255
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def _set_mode(self, training: bool) -> None:
        body = self.body.module
        body.train(training)
        if training and self.bn == "frozen":
            for layer in body.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        train = bool(training) and self.trainable
        self._set_mode(train)
        x = self._normalise(torch.as_tensor(inputs))
        with torch.set_grad_enabled(train and torch.is_grad_enabled()):
            out = self._features(x)
        return out.permute(0, 2, 3, 1).contiguous()

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], *self._map_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "backbone_name": self.backbone_name,
            "image_size": self.prep.input_size,
            "bn": self.bn,
        }


def _create(name: str, weights: str | None) -> Any:
    """`weights`: "imagenet" (the backbone's pretrained weights), None (random) or a local file."""
    if weights == "imagenet":
        return create_backbone(name)
    if weights is None:
        return create_backbone(name, pretrained=False)
    return create_backbone(name, weights=weights)


def backbone(
    name: str = "efficientnet_lite0",
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = False,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    bn: str = "frozen",
) -> Any:
    """A Keras model around a graft image backbone, like `keras.applications.VGG16(include_top=False)`.

    name: any graft image backbone (`graft backbones`, torchvision names, `timm/<name>`).
    input_shape: (height, width, 3) of the images given, default any size.
    image_size: the resolution the backbone sees (images are resized inside); default its own.
    weights: "imagenet" (pretrained, offline for the packaged EfficientNet-Lite0), None or a file.
    bn: "frozen" keeps BatchNorm's running statistics when unfrozen; "trainable" updates them.
    """
    if include_top:
        raise ConfigError(
            "include_top=True is not available: graft backbones come without their ImageNet classifier; "
            "add your own head (GlobalAveragePooling2D + Dense)"
        )
    shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
    if len(shape) != 3 or shape[-1] != 3:
        raise ConfigError(f"input_shape must be (height, width, 3), got {input_shape}")
    layer = GraftBackbone(name, image_size=image_size, weights=weights, bn=bn, name=f"graft_{_slug(name)}")
    inputs = keras.Input(shape=shape, name="images")
    return keras.Model(inputs, layer(inputs), name=f"{_slug(name)}_base")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


__all__ = ["GraftBackbone", "backbone"]
