"""graft.keras: the packaged backbone as a Keras 3 layer on the torch backend. Preprocessing inside,
an NHWC feature map out, the seed article's Sequential recipe, freezing (weights and BatchNorm
statistics untouched), fine-tuning after `trainable = True`, the example script, one-line errors."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder

if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
    pytest.skip("graft.keras runs on Keras' torch backend", allow_module_level=True)
keras = pytest.importorskip("keras", reason="graft.keras needs the `keras` extra")

import graft.keras as gk  # noqa: E402
from graft.backbones import create_backbone  # noqa: E402
from graft.errors import ConfigError  # noqa: E402

# Keras' own numpy conversions, not graft's: numpy 2 asks __array__ for a copy keyword
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "keras_cifar10.py"


def _images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images of 3 classes told apart by colour, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    images[np.arange(n), :, :, labels] += 180  # red, green or blue
    return images, labels


def _seed_model(base, classes: int = 3):
    """The seed article's head on the base, compiled as the article does."""
    from keras.layers import Dense, Dropout, GlobalAveragePooling2D

    model = keras.Sequential(
        [
            base,
            GlobalAveragePooling2D(),
            Dense(32, activation="relu"),
            Dropout(0.5),
            Dense(classes, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def _body(base) -> torch.nn.Module:
    return base.get_layer(index=1).body.module


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_feature_map_equals_the_torch_backbone_on_normalised_inputs() -> None:
    base = gk.backbone("efficientnet_lite0", input_shape=(32, 32, 3), image_size=64)
    assert base.output_shape == (None, 2, 2, 1280)  # stride 32 at 64 px: a map, NHWC
    images, _ = _images(2)
    out = keras.ops.convert_to_numpy(base(images, training=False))
    reference = create_backbone("efficientnet_lite0").body.eval()
    x = torch.nn.functional.interpolate(
        torch.as_tensor(images).permute(0, 3, 1, 2).float(),
        size=(64, 64),
        mode="bicubic",
        align_corners=False,
    )
    with torch.no_grad():
        expected = reference.forward_features((x / 255 - 0.5) / 0.5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_seed_recipe_frozen_then_finetuned() -> None:
    images, labels = _images(24)
    base = gk.backbone("efficientnet_lite0", input_shape=(32, 32, 3), image_size=32)
    base.trainable = False
    model = _seed_model(base)
    assert len(model.trainable_weights) == 4  # the two Dense layers only
    body = _body(base)
    before = _state(body)
    head_before = [w.numpy().copy() for w in model.layers[2].weights]
    model.fit(images, labels, epochs=2, batch_size=8, verbose=0)
    assert _changed(before, body) == set()  # weights and BatchNorm statistics untouched
    assert not all(
        np.array_equal(a, w.numpy()) for a, w in zip(head_before, model.layers[2].weights, strict=True)
    )

    base.trainable = True
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=1e-5),
        metrics=["accuracy"],
    )
    assert len(model.trainable_weights) > 100
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    changed = _changed(before, body)
    assert any(k.endswith("weight") and "conv" in k for k in changed)  # the backbone fine-tunes
    assert not any("running_" in k for k in changed)  # bn="frozen": pretrained statistics kept
    proba = model.predict(images[:4], verbose=0)
    assert proba.shape == (4, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)


def test_trainable_batchnorm_updates_its_statistics() -> None:
    images, labels = _images(8)
    base = gk.backbone("efficientnet_lite0", input_shape=(32, 32, 3), image_size=32, bn="trainable")
    model = _seed_model(base)
    before = _state(_body(base))
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert any("running_mean" in k for k in _changed(before, _body(base)))


def test_bad_arguments_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="include_top=True is not available"):
        gk.backbone("efficientnet_lite0", include_top=True)
    with pytest.raises(ConfigError, match=r"input_shape must be \(height, width, 3\)"):
        gk.backbone("efficientnet_lite0", input_shape=(32, 32))
    with pytest.raises(ConfigError, match="bad bn='batch'"):
        gk.backbone("efficientnet_lite0", bn="batch")


def _reimport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "graft.keras", raising=False)  # restored after the test
    importlib.import_module("graft.keras")


def test_another_keras_backend_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(ConfigError, match="KERAS_BACKEND='jax': set KERAS_BACKEND=torch") as err:
        _reimport(monkeypatch)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")  # keras imported first, elsewhere
    with pytest.raises(
        ConfigError, match="Keras is running on 'tensorflow': import graft.keras before keras"
    ):
        _reimport(monkeypatch)


def test_missing_keras_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'graft-learn\[keras\]'"):
        _reimport(monkeypatch)


def test_example_script_runs_on_a_tiny_folder(tmp_path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        make_image_folder(tmp_path / "cifar" / split, per_class=4, seed=seed)
    spec = importlib.util.spec_from_file_location("keras_cifar10", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--data", str(tmp_path / "cifar"), "--train-per-class", "3", "--test-per-class", "2"]
    result = example.main([*argv, "--image-size", "32", "--epochs", "1"])
    assert result["train_images"] == 9 and result["test_images"] == 6
    for key in ("frozen_test_accuracy", "finetuned_test_accuracy"):  # a share of the 6 test images
        assert result[key] * 6 == pytest.approx(round(result[key] * 6)), (key, result[key])
