"""The config validates itself wherever it is built (CLI, graft.Classifier, a script): types,
choices, durations and ranges, each a one-line ConfigError naming the option."""

from __future__ import annotations

import numpy as np
import pytest

from graft import Classifier
from graft.config import TrainConfig
from graft.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"bn": "frozn"}, "unknown --bn 'frozn'; choose one of frozen, trainable"),
        ({"tta": "flp"}, "unknown --tta 'flp'; choose one of auto, flip, none"),
        ({"augment": "heavy"}, "unknown --augment 'heavy'; choose one of none, light, strong"),
        ({"strategy": "fast"}, "unknown --strategy 'fast'"),
        ({"time_budget": "soon"}, "bad --time-budget 'soon'"),
        ({"time_budget": -5}, "bad --time-budget"),
        ({"epochs": "3"}, "--epochs must be int, got '3'"),
        ({"epochs": True}, "--epochs must be int, got True"),
        ({"seed": 1.5}, "--seed must be int, got 1.5"),
        ({"lr": "fast"}, "--lr must be float, got 'fast'"),
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"dropout": 1.0}, "--dropout must be in [0, 1)"),
        ({"feature_layers": "all"}, "--feature-layers must be auto or a number of layers, got 'all'"),
        ({"feature_layers": 0}, "--feature-layers must be auto or a number of layers, got 0"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_option(given, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="d", **given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_feature_layers_take_a_number_or_its_text():
    assert TrainConfig(data="d", feature_layers=4).feature_layers == "4"
    assert TrainConfig(data="d", feature_layers=" 2").feature_layers == "2"
    assert TrainConfig(data="d").feature_layers == "auto"


def test_durations_parse_and_numpy_numbers_are_numbers():
    assert TrainConfig(data="d", time_budget="30m").time_budget == 1800.0
    assert TrainConfig(data="d", time_budget="1h").time_budget == 3600.0
    config = TrainConfig(data="d", epochs=np.int64(3), lr=np.float32(0.5), time_budget=90)
    assert (config.epochs, config.lr, config.time_budget) == (3, 0.5, 90)


def test_the_python_api_refuses_a_misspelt_option_when_it_fits(tmp_path):
    """scikit-learn's contract: __init__ stores, fit validates (get_params/clone keep working)."""
    model = Classifier(bn="frozn")
    assert model.get_params()["bn"] == "frozn"
    with pytest.raises(ConfigError, match="unknown bn='frozn'"):  # as Python spells it
        model.fit(tmp_path)


def test_python_spelling_names_options_as_parameters() -> None:
    from graft.config import python_spelling

    assert python_spelling("pass --overwrite, or another --out") == "pass overwrite=True, or another out="
    assert python_spelling("split off --val-fraction 0.1 (--val)") == "split off val_fraction=0.1 (val=)"
    assert python_spelling("use text_column=... / --text-column") == "use text_column=..."
    assert python_spelling("--no-such-flag and a-b--c stay") == "--no-such-flag and a-b--c stay"


def test_the_plan_is_frozen_and_notes_make_a_new_plan() -> None:
    """A run's plan is resolved stage by stage into new plans; none is changed in place."""
    import dataclasses

    from graft.config import Plan

    plan = Plan("image", "b", "finetune", "", 3, 64, 1e-3, 1, "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epochs = 5  # type: ignore[misc]
    noted = plan.with_note("a note")
    assert plan.notes == () and noted.notes == ("a note",)
    assert noted.to_dict()["notes"] == ["a note"] and noted.epochs == 3
