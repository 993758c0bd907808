"""graft.Classifier as a scikit-learn estimator: the estimator checks that apply to inputs that are
files, images or texts (not numeric tables), and scikit-learn's own tools on a small folder.

Checks run (sklearn.utils.estimator_checks): check_no_attributes_set_in_init,
check_get_params_invariance, check_set_params, check_parameters_default_constructible,
check_estimator_cloneable, check_estimator_repr, check_estimators_unfitted,
check_estimator_tags_renamed, check_valid_tag_types.
Not run: the checks that fit on random numeric 2-D arrays (check_fit2d_*, check_n_features_in,
check_classifiers_train, check_supervised_y_2d, check_dtype_object,
check_estimators_overwrite_params, ...): graft's inputs are image
files, images or texts, which the tags say (two_d_array False), and a pretrained backbone cannot
take a row of floats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder

import graft

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone, is_classifier  # noqa: E402
from sklearn.metrics import accuracy_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils import estimator_checks as checks  # noqa: E402

FAST = {"strategy": "linear", "image_size": 32, "epochs": 3}


@pytest.mark.parametrize(
    "check",
    [
        checks.check_no_attributes_set_in_init,
        checks.check_get_params_invariance,
        checks.check_set_params,
        checks.check_parameters_default_constructible,
        checks.check_estimator_cloneable,
        checks.check_estimator_repr,
        checks.check_estimators_unfitted,
        checks.check_estimator_tags_renamed,
        checks.check_valid_tag_types,
    ],
    ids=lambda check: check.__name__,
)
def test_scikit_learn_estimator_checks(check):
    check("Classifier", graft.Classifier(**FAST))


def test_it_is_a_classifier_whose_parameters_are_the_train_options():
    clf = graft.Classifier("efficientnet_lite0", epochs=4)
    assert is_classifier(clf)
    params = clf.get_params()
    assert params["backbone"] == "efficientnet_lite0" and params["epochs"] == 4
    assert params["precision"] == "auto" and params["weight_decay"] == 0.05  # TrainConfig's defaults
    assert clone(clf).get_params() == params
    assert "epochs=4" in repr(clf)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    root = make_image_folder(tmp_path_factory.mktemp("sk") / "data", per_class=8, seed=4)
    paths = sorted(str(p) for p in root.glob("*/*"))
    labels = np.array([CLASSES.index(Path(p).parent.name) for p in paths])  # integers, not names
    return paths, labels


def test_labels_come_back_of_the_type_they_were_given(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run folders go to ./runs
    paths, labels = images
    clf = graft.Classifier(**FAST).fit(paths, labels, log=lambda line: None)
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    predicted = clf.predict(paths)
    assert predicted.dtype.kind == "i"
    assert accuracy_score(labels, predicted) == clf.score(paths, labels) >= 0.9


def test_cross_val_score_grid_search_and_pipeline(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, labels = images
    quiet = {"log": lambda line: None}
    scores = cross_val_score(graft.Classifier(**FAST), paths, labels, cv=2, params=quiet)
    assert scores.shape == (2,) and scores.min() >= 0.8
    search = GridSearchCV(graft.Classifier(**FAST), {"epochs": [1, 3]}, cv=2).fit(paths, labels, **quiet)
    assert search.best_params_["epochs"] in (1, 3) and search.best_score_ >= 0.8
    assert len(list((tmp_path / "runs").iterdir())) == 2 + 4 + 1  # one folder per fit, none overwritten
    pipeline = make_pipeline(FunctionTransformer(lambda X: X), graft.Classifier(**FAST))
    pipeline.fit(paths, labels, classifier__log=lambda line: None)
    assert accuracy_score(labels, pipeline.predict(paths)) >= 0.9


def test_labels_keep_their_type_and_a_mix_of_types_is_one_line():
    from graft.api import _label_values
    from graft.errors import DataError

    assert list(_label_values([2, 0, 1, 0])) == [0, 1, 2]
    assert list(_label_values([("a", 1), ("b", 0), ("a", 1)])) == [("a", 1), ("b", 0)]
    with pytest.raises(DataError, match="the labels mix types"):
        _label_values(["cat", 1, "dog"])


def test_fits_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    from graft.runner import default_run_dir

    monkeypatch.chdir(tmp_path)
    first, second = (default_run_dir("lite0", "linear", "data") for _ in range(2))
    assert first != second and first.is_dir() and second.is_dir()
