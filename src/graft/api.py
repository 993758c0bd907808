"""The Python API, a scikit-learn estimator: `__init__` stores options, `fit` returns self, learned
state ends in `_`.

    clf = graft.Classifier(strategy="linear", epochs=10).fit("my_images/")
    clf.predict(["a.jpg"]); clf.predict_proba(["a.jpg"]); clf.score(images, labels)
    clf.save("my-model"); graft.load("my-model").predict(["b.jpg"])

`fit` takes a data path (a folder of class folders, a table of texts; anything `graft train`
takes), in-memory inputs and labels: `fit(images_or_texts, labels)`, a pandas DataFrame
(`fit(df, y)`, or `fit(df)` with its `label_column`), or a Hugging Face Dataset / DatasetDict.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError

from .config import TrainConfig, speaking_python
from .data.frames import is_dataframe, is_hf_dataset
from .errors import ConfigError, DataError

# every TrainConfig field but the data is a parameter, with TrainConfig's default (one place)
_FIELDS = [f for f in fields(TrainConfig) if f.name != "data"]
_OPTIONS = [f.name for f in _FIELDS]
_FIRST = ("backbone", "strategy")  # may be given by position, as before
SCRATCH = ("checkpoint.*", "best.safetensors")  # a run folder's files that are not the bundle's


class NotFitted(ConfigError, NotFittedError):
    """predict before fit: a graft error (one line on the command line) and scikit-learn's
    NotFittedError (what its tools expect)."""


def _signature() -> inspect.Signature:
    """`Classifier.__init__`'s parameters, generated from TrainConfig's fields, so that
    scikit-learn's get_params / set_params / clone see every option and its default."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    by_name = {f.name: f for f in _FIELDS}
    for f in [by_name[name] for name in _FIRST] + [f for f in _FIELDS if f.name not in _FIRST]:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name in _FIRST else inspect.Parameter.KEYWORD_ONLY
        default = None if f.default is MISSING else f.default
        params.append(inspect.Parameter(f.name, kind, default=default))
    return inspect.Signature(params)


class _Estimator(BaseEstimator):
    """What graft's scikit-learn estimators share: options as parameters, `fit` on a data path or
    on in-memory inputs and labels, `save`."""

    _task_kind: str = "auto"  # what in-memory labels are read as (`_in_memory_splits`)

    def __init__(self, *args: Any, **params: Any) -> None:
        bound = _SIGNATURE.bind(self, *args, **_known(params))
        bound.apply_defaults()
        for name in _OPTIONS:  # scikit-learn's contract: store the parameters, nothing else
            setattr(self, name, bound.arguments[name])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # inputs are image files, images or texts: a list of them, not a 2-D numeric table
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = True  # threads and bf16 on some machines: not bit-for-bit
        return tags

    def _config(self, data: str, **overrides: Any) -> TrainConfig:
        return TrainConfig(data=data, **(self.get_params(deep=False) | overrides))

    def fit(
        self,
        X: Any,
        y: Sequence[Any] | None = None,
        *,
        log: Callable[[str], None] = print,
        text_column: str | None = None,
        label_column: str | None = None,
        image_column: str | None = None,
    ) -> Classifier:
        """Train on a data path (a folder of class folders, a table of texts: anything `graft
        train` takes), on in-memory inputs (image files, arrays, PIL images or texts) and their
        labels y (any hashable type: classes_ and predict give them back), on a pandas DataFrame
        (with y, or its label column), or on a Hugging Face Dataset / DatasetDict (its splits).
        `text_column` / `image_column` / `label_column` name a table's input and label columns for
        this fit (default: the estimator's options). Its errors name options as parameters (`val=`,
        not `--val`)."""
        columns = {"text_column": text_column, "label_column": label_column, "image_column": image_column}
        overrides = {k: v for k, v in columns.items() if v is not None}
        with speaking_python():
            return self._fit(X, y, log, overrides)

    def _fit(self, X: Any, y: Any, log: Callable[[str], None], overrides: dict[str, Any]) -> Classifier:
        from .runner import launches_processes, run

        config, splits, modality, labels = self._config(str(X), **overrides), None, None, None
        self.input_columns_: list[str] | None = None
        if y is not None or is_dataframe(X) or is_hf_dataset(X):
            config, splits, modality, labels = self._in_memory(X, y, overrides)
        if launches_processes(config):  # --devices N: the processes write the run folder
            return self._fit_processes(config, log, splits, modality, labels)
        result = run(config, log=log, splits=splits, modality=modality)
        job = result.job
        from .predict.predictor import Predictor
        from .report import bundle_meta
        from .runtime.precision import Precision

        pipeline = job.modality.input_pipeline(job.prep, backbone=job.backbone)
        meta = bundle_meta(job, result.report)
        precision = Precision(job.plan.precision, job.plan.precision_reason)  # the run's, as decided
        self.predictor_ = Predictor(
            result.model, job.modality, pipeline, job.splits.classes, meta, job.device, precision=precision
        )
        self.classes_ = labels if labels is not None else np.asarray(job.splits.classes)
        self.task_ = job.task
        self.report_ = result.report
        self.run_dir_ = result.run_dir
        self._job = job
        return self

    def _in_memory(self, X: Any, y: Any, overrides: dict[str, Any]) -> tuple[TrainConfig, Any, Any, Any]:
        """(config, splits, modality, classes_) of data given in memory: inputs and labels, a
        DataFrame, or a Hugging Face Dataset / DatasetDict (classes_ None: its class names)."""
        if is_hf_dataset(X):
            return self._dataset(X, y, overrides)
        skipped, name = [], "in-memory"
        config = self._config(name, **overrides)
        if is_dataframe(X):
            from .data.frames import frame_inputs

            name, config = "dataframe", self._config("DataFrame", **overrides)
            lists = self._task_kind != "regression"  # several label columns: labels, or targets
            X, y, skipped, self.input_columns_ = frame_inputs(
                X, y, config.text_column, config.label_column, lists, config.image_column
            )
        splits, modality, labels = _in_memory_splits(list(X), y, config, self._task_kind, skipped, name)
        return config, replace(splits, input_columns=tuple(self.input_columns_ or ())), modality, labels

    def _dataset(self, X: Any, y: Any, overrides: dict[str, Any]) -> tuple[TrainConfig, Any, Any, None]:
        from .data.frames import dataset_splits
        from .data.splits import TableLabels
        from .modalities import get_modality

        if y is not None:
            raise ConfigError("fit(dataset, y): a dataset holds its labels; name their column: label_column=")
        where = type(X).__name__
        config = self._config(where, **overrides)
        how = TableLabels(config.label_column, config.task, config.label_separator)
        inputs = config.image_column or config.text_column
        splits, kind = dataset_splits(X, where, inputs, how, config.val_fraction, config.seed, "dataset")
        return config, splits, get_modality(kind), None

    def _fit_processes(
        self,
        config: TrainConfig,
        log: Callable[[str], None],
        splits: Any,
        modality: Any,
        labels: np.ndarray | None,
    ) -> Classifier:
        from .predict.predictor import load
        from .runner import run_processes

        run_dir, report = run_processes(config, log, splits, modality)
        self.predictor_ = load(run_dir, precision=config.precision)
        self.classes_ = labels if labels is not None else np.asarray(self.predictor_.classes_)
        self.task_ = self.predictor_.task
        self.report_ = report
        self.run_dir_ = run_dir
        self._job = None
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "predictor_"):
            raise NotFitted(f"this {type(self).__name__} is not fitted yet: call fit(data) first")
        return self.predictor_

    def save(self, run_dir: str | Path) -> Path:
        """Write the bundle (and report) to `run_dir`; `graft.load(run_dir)` reads it back."""
        from .report import save_run

        self._fitted()
        if self._job is None:  # trained by several processes: the run folder is the bundle
            ignore = shutil.ignore_patterns(*SCRATCH)
            shutil.copytree(self.run_dir_, run_dir, dirs_exist_ok=True, ignore=ignore)
        else:
            save_run(self._job, self.report_, Path(run_dir))
        return Path(run_dir)


class Classifier(ClassifierMixin, _Estimator):
    """A pretrained backbone with a new head for your labels, trained the right way.

    A scikit-learn estimator: every `graft train` option is a parameter (`get_params`,
    `set_params`, `clone`, `GridSearchCV`, `cross_val_score` and `Pipeline` work), `classes_` holds
    the labels `fit` was given, of their type, and `predict` returns them. Multi-label: `y` as a
    2-D 0/1 indicator array, or a list of label lists (or sets) per input; `predict` then returns
    the indicator array (scikit-learn's convention) and `score` the subset accuracy. Each `fit`
    writes a run folder (report and bundle) as `graft train` does: `out`, else a new folder under
    ./runs/."""

    def predict_proba(self, X: Any, batch_size: int = 64) -> np.ndarray:
        """Probabilities, one column per entry of classes_ (multi-label: each label's own)."""
        return self._fitted().predict_proba(X, batch_size)

    def predict(self, X: Any, batch_size: int = 64) -> np.ndarray:
        """The most probable label of each input, of the type fit was given; multi-label: a row of
        0/1 per input, one column per entry of classes_, at the thresholds tuned on validation."""
        proba = self.predict_proba(X, batch_size)  # not fitted: NotFitted, before classes_ is read
        if self.task_.name == "multi":
            return (proba >= self.task_.thresholds()).astype(np.int64)
        return self.classes_[proba.argmax(1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy; multi-label: subset accuracy (every label of an input right), as scikit-learn's;
        its y as fit takes it (indicators, label lists, or label texts such as `a|b`)."""
        if hasattr(self, "task_") and self.task_.name == "multi":
            if not isinstance(y, np.ndarray) and all(isinstance(v, str) for v in y):
                y = [[p.strip() for p in v.split(self.label_separator) if p.strip()] for v in y]
            if _is_label_lists(y):
                y = _indicators(y, [str(c) for c in self.classes_])[0]
        return super().score(X, y, sample_weight)


class Regressor(RegressorMixin, _Estimator):
    """graft.Classifier's options and training, predicting numbers: `fit(X, y)` with y one number
    per input (or a row of numbers: several targets), or a data path whose label column(s) hold
    numbers; `predict` returns them (1-D for one target) and `score` is R2, as scikit-learn's."""

    _task_kind = "regression"

    def _config(self, data: str, **overrides: Any) -> TrainConfig:
        return TrainConfig(data=data, **(self.get_params(deep=False) | overrides | {"task": "regression"}))

    def predict(self, X: Any, batch_size: int = 64) -> np.ndarray:
        return np.asarray(self._fitted().predict(X, batch_size))


_SIGNATURE = _signature()
_Estimator.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]


def _known(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; graft.Classifier takes {', '.join(_OPTIONS)}"
        )
    return params


def _labels_array(y: Sequence[Any]) -> np.ndarray:
    """y as a 1-D array: numbers and strings as numpy types them, anything else (tuples, a mix of
    types) one object per label."""
    labels = list(y)
    kinds = {type(v) for v in labels}
    if len(kinds) > 1 and not all(issubclass(k, int | float | np.number) for k in kinds):
        raise DataError("fit(X, y): the labels mix types (numbers and text?); give them one type")
    array = np.asarray(labels)
    if array.ndim != 1:
        array = np.empty(len(labels), dtype=object)
        array[:] = labels
    return array


def _label_values(y: Sequence[Any]) -> np.ndarray:
    """The distinct labels, sorted, as scikit-learn orders classes_ (np.unique)."""
    try:
        values = np.unique(_labels_array(y))
    except TypeError:
        raise DataError("fit(X, y): the labels mix types that cannot be sorted together") from None
    names = [str(v) for v in values]
    if len(set(names)) != len(names):
        raise DataError("fit(X, y): two different labels read the same as text; make them distinct")
    return values


def _is_label_lists(y: Any) -> bool:
    """y given as a label list (or set) per input: multi-label. Tuples stay single labels."""
    sets = (list, set, frozenset)
    return isinstance(y, list | tuple) and len(y) > 0 and all(isinstance(v, sets) for v in y)


def _indicators(y: Any, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Label lists -> a 0/1 indicator array and the label names (sorted, as text)."""
    rows = [{str(v) for v in labels} for labels in y]
    names = names if names is not None else sorted(set().union(*rows))
    index = {n: j for j, n in enumerate(names)}
    out = np.zeros((len(rows), len(names)), np.float32)
    for i, row in enumerate(rows):
        for label in row:
            if label in index:
                out[i, index[label]] = 1.0
    return out, names


def _in_memory_splits(
    X: list[Any], y: Any, config: TrainConfig, kind: str, skipped: Sequence[Any] = (), name: str = "in-memory"
) -> tuple[Any, Any, Any]:
    """(splits, modality, classes_) for in-memory inputs and their labels: single-label (any
    hashable labels), multi-label (an indicator array, label lists, or labels as text read by the
    task rules of a table's label column) or regression (numbers). `skipped`: the rows a DataFrame
    reader left out, for the report."""
    from .data.splits import DataSplits, Labelled, stratified_split
    from .modalities import modality_of_inputs

    if len(X) != len(y):
        raise DataError(f"fit(X, y): {len(X)} inputs but {len(y)} labels")
    modality = modality_of_inputs(X)
    labels, classes, task, values = _encoded_labels(y, config, kind)
    train_idx, val_idx = stratified_split(labels, config.val_fraction, config.seed, "fit(X, y)", classes)
    data = Labelled(X, labels)
    splits = DataSplits(
        data.subset(train_idx),
        data.subset(val_idx),
        None,
        classes,
        name,
        f"split:{config.val_fraction}",
        list(skipped),
        task=task,
    )
    return splits, modality, values


Encoded = tuple[np.ndarray, tuple[str, ...], Any, np.ndarray]  # labels, class names, task, classes_


def _encoded_labels(y: Any, config: TrainConfig, kind: str) -> Encoded:
    """(labels as the model learns them, graft's class names, the task or its name, classes_)."""
    if kind == "regression":
        labels = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        width = labels.shape[1]
        classes = ("target",) if width == 1 else tuple(f"target_{j}" for j in range(width))
        return labels, classes, "regression", np.asarray(classes)
    if config.task == "regression":
        raise ConfigError("task='regression' predicts numbers: use graft.Regressor, not graft.Classifier")
    several = _is_label_lists(y) or (isinstance(y, np.ndarray) and y.ndim == 2)
    if several and config.task == "single":
        raise ConfigError("task='single' takes one label per input, but y holds several: use task='multi'")
    if _is_label_lists(y):
        labels, names = _indicators(y)
        return labels, tuple(names), "multi", np.asarray(names)
    if isinstance(y, np.ndarray) and y.ndim == 2:
        labels = np.asarray(y, dtype=np.float32)
        return labels, tuple(str(j) for j in range(labels.shape[1])), "multi", np.arange(labels.shape[1])
    if _separated_labels(list(y), config):
        return _multi_from_text(list(y), config)
    values = _label_values(list(y))
    classes = tuple(str(v) for v in values)  # graft's class names; classes_ keeps the values
    return np.searchsorted(values, _labels_array(list(y))).astype(np.int64), classes, "single", values


def _separated_labels(y: list[Any], config: TrainConfig) -> bool:
    """Labels given one per input that are multi-label by a table's rules (`graft train`'s):
    task='multi', or task='auto' and texts holding label_separator (`a|b`)."""
    if config.task == "multi":
        return True
    from .tasks import auto_task

    texts = all(isinstance(v, str) for v in y)
    return config.task == "auto" and texts and auto_task(y, config.label_separator) == "multi"


def _multi_from_text(y: list[Any], config: TrainConfig) -> Encoded:
    """Multi-label from one label text per input (`a|b`), read by the task a table's label column
    gets (graft.tasks.resolve_task): the same labels, names and separator as `graft train`."""
    from .data.tables import split_columns
    from .tasks import resolve_task

    raw = [str(v) for v in y]
    learned = resolve_task("multi", raw, split_columns(config.label_column), config.label_separator)
    labels, _ = learned.encode_all(raw)  # every label is among the names read from these labels
    return labels, learned.names, learned, np.asarray(learned.names)
