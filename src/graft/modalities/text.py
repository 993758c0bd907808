"""Texts: CSV/TSV/JSONL/parquet/feather tables, folders with train.csv [dev.csv] [test.csv],
<class>/*.txt, or a saved Hugging Face dataset with a text column.

Texts are tokenised once into unpadded id tensors and batched by length (`text_batches`).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import TextPreprocessing
from ..backbones._text import PAIR_ENCODINGS, pair_width
from ..data.frames import dataset_kind, load_dataset_splits
from ..data.splits import DataSplits, Labelled, SkippedFile, TableLabels
from ..data.tables import TABLE_SUFFIXES, VAL_NAMES, find_table, split_columns
from ..data.text import TEXT_FILE_SUFFIX, is_split_folder, load_text_data, read_text_column, read_text_data
from ..distributed import shards
from ..errors import ConfigError, DataError
from ..runtime.device import to_device
from .base import Batch, Defaults, Features, StrategyDefaults
from .text_batches import (
    Padding,
    bucketed_order,
    is_pair,
    length_from_data,
    pair_of,
    sorted_batches,
    token_ids,
    tokenize,
)

FEATURE_LAYERS = 4  # --feature-layers auto: the probe's other choice, the last 4 layers (see below)
# ... tried while those features take at most this (float32): the probe holds about three copies
# (the features, its training tensor, the last layer's slice), so 1 GiB keeps auto's probe within
# a few GiB of today's on a laptop (MiniLM: about 170,000 texts; a 768-wide encoder: about 87,000)
WIDE_FEATURES_MAX_BYTES = 2**30

# Text encoders: BERT-style fine-tuning (Devlin et al.: 2-4 epochs, batch 32, warm-up) with
# ULMFiT's discriminative rates. The rate given is the head's; with --lr-mult 10 over a 6-layer
# encoder the top layer gets 0.72x, the bottom layer 0.14x and the embeddings 0.1x of it, i.e.
# 1.4e-4 .. 2e-5: the range small encoders (MiniLM, DistilBERT) are fine-tuned with. Chosen from
# that range before measuring; on TREC-6 (one seed) 2e-4 and 5e-4 gave 3.4% and 3.8% test error.
# Two epochs, the low end of BERT's range, because an epoch of text costs minutes on a laptop
# CPU; small datasets get more (at least 300 updates: Mosbach et al. 2021, "On the stability of
# fine-tuning BERT": train small tasks longer). No head-only epoch: with warm-up (10% of the
# steps, ULMFiT's cut_frac and BERT's warm-up), a fresh linear head on pooled embeddings settles
# within the first steps.
TEXT_DEFAULTS = Defaults(
    strategies={
        "linear": StrategyDefaults(epochs=30, lr=1e-3, batch_size=256),
        "finetune": StrategyDefaults(epochs=2, lr=2e-4, batch_size=32, freeze_epochs=0),
        "gradual": StrategyDefaults(epochs=4, lr=2e-4, batch_size=32),
    },
    min_finetune_steps=300,
    max_default_epochs=20,
    warmup_share=0.1,
)


def _hidden_size(backbone: Any) -> int:
    """One pooled vector's width: the encoder's hidden size."""
    config = backbone.model_config or {}
    return int(config.get("hidden_size") or config.get("dim"))  # `_assemble` reads hidden_size too


def _pair_features(splits: DataSplits) -> str:
    """A bi-encoder's pair features for this data's task: for a numeric target (a similarity
    score) the cosine of the two embeddings, which fine-tuning regresses on the score (Sentence-BERT's
    regression objective) and the probe also tries beside all the pair features (`use_feature_layers`);
    for classes [u, v, |u-v|, u*v] (Sentence-BERT's classification features)."""
    task = splits.task if isinstance(splits.task, str) else getattr(splits.task, "name", "single")
    return "cosine" if task == "regression" else "concat"


def _encoder_layers(backbone: Any) -> int:
    """The encoder's layer count, from its config (BERT-likes: num_hidden_layers; DistilBERT: n_layers)."""
    config = backbone.model_config or {}
    return int(config.get("num_hidden_layers") or config.get("n_layers") or 1)


class _TrainingTexts:
    def __init__(self, ids: list[torch.Tensor], labels: np.ndarray, padding: Padding) -> None:
        self.ids, self.labels, self.padding = ids, torch.as_tensor(labels), padding

    def __len__(self) -> int:
        return len(self.ids)

    def grow_inputs(self, epochs: int, model: nn.Module) -> str | None:
        return None  # token sequences have no size to grow

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, seed: int, device: torch.device) -> Callable[[int], Iterator[Batch]]:
        lengths = [len(t) for t in self.ids]

        def batches(epoch: int) -> Iterator[Batch]:
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            for batch in bucketed_order(lengths, batch_size, generator):
                index = shards.shard(batch)  # this process's part of the batch
                x = self.padding([self.ids[i] for i in index], device)
                yield to_device(x, device), to_device(self.labels[index], device)  # pinned on CUDA

        return batches

    def plain_inputs(self, limit: int, device: torch.device) -> Iterator[torch.Tensor]:
        for start in range(0, min(len(self), limit), 64):
            yield self.padding(self.ids[start : start + 64], device).to(device)

    def timing_batches(self, batch_size: int, device: torch.device, count: int) -> list[Batch]:
        """Batches of median-length texts: what a bucketed epoch costs per step on average."""
        median = int(np.median([len(t) for t in self.ids]))
        typical = sorted(range(len(self)), key=lambda i: abs(len(self.ids[i]) - median))[:batch_size]
        x = self.padding([self.ids[i] for i in typical], device).to(device)
        return [(x, self.labels[typical].to(device))] * count

    def close(self) -> None:
        """Nothing to release: batches are made in this process."""


def _listed(names: Any, limit: int = 8) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class _EvalTexts:
    def __init__(
        self, ids: list[torch.Tensor], labels: np.ndarray, padding: Padding, sources: Sequence[Any]
    ) -> None:
        self.ids, self.labels, self.padding, self.sources = ids, torch.as_tensor(labels), padding, sources

    def __len__(self) -> int:
        return len(self.ids)

    def batches(
        self, device: torch.device, batch_size: int = 128
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return sorted_batches(self.ids, self.padding, batch_size, device)


class _Embedder(nn.Module):
    """A text body's `embed` as a module: one pooled vector per text, whatever its pair encoding."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.body.embed(input_ids)


class _TextInputs:
    """A bundle's input side: texts -> token ids (truncated as in training) -> padded batches."""

    def __init__(self, tokenizer: Any, prep: TextPreprocessing) -> None:
        self.tokenizer, self.prep = tokenizer, prep
        self.warned = False  # a pairs model given single texts: said once

    def as_list(self, inputs: Any) -> list[str | tuple[str, str]]:
        """Texts, or sentence pairs as 2-tuples (or 2-lists, 2-arrays) of texts; one pair given
        alone, as a tuple, to a model trained on pairs is one input."""
        if isinstance(inputs, str):
            return [inputs]
        if self.prep.pairs and isinstance(inputs, tuple) and is_pair(inputs):
            inputs = [inputs]
        items = [pair if pair[1] is not None else pair[0] for pair in map(pair_of, inputs)]
        if self.prep.pairs and not self.warned and any(isinstance(t, str) for t in items):
            self.warned = True  # once per loaded model
            warnings.warn(
                "this model was trained on sentence pairs: a single text is read as a pair's first "
                "text alone; give (first, second) pairs, or --input FILE with both columns",
                stacklevel=2,
            )
        return items  # type: ignore[return-value]

    def preprocess(self, inputs: Any) -> list[torch.Tensor]:
        """Token ids per text (unpadded), truncated to the length the model was trained with."""
        return token_ids(self.tokenizer, self.as_list(inputs), self.prep)

    def embeddings(self, body: nn.Module, texts: Any, batch_size: int, device: torch.device) -> torch.Tensor:
        """Each text's pooled vector from the encoder (float32, on the CPU, in input order): a
        bi-encoder's sentence embedding, what its pairs are compared by."""
        from ..runtime.inference import forward_all

        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        ids = tokenize(self.tokenizer, texts, self.prep.max_length)
        padding = Padding(self.prep.pad_id, self.prep.max_length)
        batches = sorted_batches(ids, padding, batch_size, device) if ids else iter(())
        return forward_all(_Embedder(body), batches, len(ids)) if ids else torch.zeros(0, 0)

    def batches(
        self,
        inputs: Sequence[Any],
        batch_size: int,
        device: torch.device,
        on_failure: Callable[[int, str], None] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every text can be tokenised: `on_failure` (as for images) is never called."""
        ids = self.preprocess(inputs)
        padding = Padding(self.prep.pad_id, self.prep.max_length)
        return sorted_batches(ids, padding, batch_size, device) if ids else iter(())


class TextModality:
    name = "text"
    unit = "texts"
    # 16 clients of 8 texts, 2 cores: 600 texts/s at batches of 32, 733 at 64, 776 at 128, level
    # within the run-to-run noise (`python -m bench serve --only text --max-batch N`); 64 halves a
    # batch's latency against 128 and is one forward of the predictor's length-sorted batches
    serve_batch = 64
    size_option = "--max-length"  # smaller inputs, for advice
    default_backbone = "minilm"
    packaged_backbones = ("minilm",)
    # the hub's sentence encoders, by MTEB classification results and size (docs/guide/pick.md)
    online_backbones = {
        "cpu": ("hf/sentence-transformers/all-MiniLM-L12-v2", "hf/BAAI/bge-small-en-v1.5"),
        "gpu": (
            "hf/sentence-transformers/all-MiniLM-L12-v2",
            "hf/BAAI/bge-small-en-v1.5",
            "hf/intfloat/e5-base-v2",
            "hf/BAAI/bge-base-en-v1.5",
        ),
    }
    defaults = TEXT_DEFAULTS
    request_field = "texts"  # what `graft serve` takes: a JSON list of texts
    mirrors = False
    mirror = None  # a text has no mirror image

    def inputs_in(self, path: Path, config: Any = None) -> list[str]:
        kind = dataset_kind(path)  # a saved Hugging Face dataset without an Image column
        if kind is not None:
            return [str(path)] if kind == self.name else []
        if path.is_file():
            return [str(path)] if path.suffix.lower() in TABLE_SUFFIXES else []
        if not path.is_dir():
            return []
        if is_split_folder(path):
            names = ("train", "dev", "val", "valid", "validation", "test")
            return [str(t) for name in names if (t := find_table(path, [name])) is not None]
        return [str(p) for p in sorted(path.glob(f"*/*{TEXT_FILE_SUFFIX}")) if not p.name.startswith(".")]

    def inputs_of_folder(self, folder: Path) -> list[str]:
        """The text of every .txt file below `folder`, for `graft predict FOLDER`."""
        files = sorted(p for p in folder.rglob(f"*{TEXT_FILE_SUFFIX}") if not p.name.startswith("."))
        return [p.read_text(encoding="utf-8-sig", errors="replace").strip() for p in files]

    def inputs_of_file(self, path: Path, meta: dict[str, Any]) -> list[Any]:
        """The texts of a table's text column(s) (the bundle's), or of a plain file, one a line."""
        return read_text_column(path, meta.get("recipe", {}).get("text_column", "text"))

    def read_upload(self, data: bytes, name: str, prep: Any = None) -> str:
        """Texts come as JSON ({"texts": [...]}), not as uploaded files."""
        raise DataError(f"{name}: a text model takes JSON {{\"texts\": [...]}}, not an uploaded file")

    def example_input(self) -> str:
        return "a short text to warm the model up"

    def accepts(self, item: Any) -> bool:
        """A text, or a sentence pair: a 2-tuple, 2-list or 2-array of texts."""
        if isinstance(item, tuple | list | np.ndarray):
            return len(item) == 2 and all(isinstance(t, str) for t in item)
        return isinstance(item, str)

    def check(self, config: Any) -> None:
        if config.image_size is not None or config.flip_features or config.tta == "flip":
            raise ConfigError(
                "--image-size, --flip-features and --tta flip are for image data; texts take --max-length"
            )
        if config.resize == "progressive":
            raise ConfigError("--resize progressive is for image data: texts have no size to grow")
        if config.image_column is not None:
            raise ConfigError("--image-column is for tables of image paths; texts take --text-column")

    def load_splits(self, config: Any) -> DataSplits:
        if dataset_kind(config.data) is not None:
            how = TableLabels(config.label_column, config.task, config.label_separator)
            return load_dataset_splits(
                config.data, config.val, config.test, config.text_column, how,
                config.val_fraction, config.seed,
            )
        return load_text_data(
            config.data,
            config.val,
            config.test,
            split_columns(config.text_column),
            config.label_column,
            config.val_fraction,
            config.seed,
            config.task,
            config.label_separator,
        )

    def evaluation_split(self, path: Path, classes: Sequence[str]) -> tuple[Path, str] | None:
        if not is_split_folder(path):
            return None
        for stems, split in ((["test"], "test"), (VAL_NAMES, "validation")):
            found = find_table(path, stems)
            if found is not None:
                return found, split
        return None

    def read_labelled(
        self, path: str | Path, meta: dict[str, Any], classes: Sequence[str]
    ) -> tuple[Labelled, list[SkippedFile]]:
        if not self.inputs_in(Path(path)):
            raise DataError(
                f"{path} is not a text table or folder, and {meta['backbone']['name']} is a text model"
            )
        recipe = meta.get("recipe", {})
        table = read_text_data(
            path, split_columns(recipe.get("text_column", "text")), recipe.get("label_column", "label")
        )
        if (meta.get("task") or {}).get("name", "single") != "single":  # several labels, or numbers
            from ..tasks import task_from_meta

            labels_array, refused = task_from_meta(meta).encode_all(table.labels)
            out = {i for i, _ in refused}
            skipped = list(table.skipped) + [SkippedFile(f"{path}: row {i + 1}", why) for i, why in refused]
            return Labelled([t for i, t in enumerate(table.texts) if i not in out], labels_array), skipped
        index = {c: i for i, c in enumerate(classes)}
        texts, labels, unknown = [], [], Counter()
        for text, label in zip(table.texts, table.labels, strict=True):
            if label in index:
                texts.append(text)
                labels.append(index[label])
            else:
                unknown[label] += 1
        if unknown and not texts:
            raise DataError(
                f"{path}: none of its labels ({_listed(unknown)}) is one of the model's classes "
                f"({_listed(classes)}); relabel the file, or check --label-column"
            )
        skipped = list(table.skipped) + [
            SkippedFile(str(path), f"label {label!r} ({n} row(s)) is not one of the model's classes")
            for label, n in sorted(unknown.items())
        ]
        return Labelled(texts, np.asarray(labels, dtype=np.int64)), skipped

    def preparation_seconds(self, prep: TextPreprocessing, sources: Sequence[Any]) -> float:
        """Tokenising is a fast pass (thousands of texts a second): the budget leaves it out."""
        return 0.0

    def adaptation_corpus(self, config: Any, splits: DataSplits) -> list[Any]:
        """--adapt-lm reads the training texts (never validation or test) and --unlabelled."""
        texts = list(splits.train.sources)  # texts and sentence pairs
        if config.unlabelled:
            texts += read_text_column(config.unlabelled, config.text_column)
        return texts

    def preprocessing(self, config: Any, backbone: Any, splits: DataSplits) -> TextPreprocessing:
        prep = backbone.preprocessing.with_pooling(config.pooling)
        prep = prep.with_pairs(any(is_pair(t) for t in splits.train.sources[:1000]))
        backbone.body.pooling = prep.pooling
        if config.feature_layers != "auto":
            prep = self.use_feature_layers(backbone, prep, int(config.feature_layers))
        if not prep.pairs and config.pair_encoding != "auto":
            raise ConfigError(
                f"--pair-encoding {config.pair_encoding} is for sentence pairs: name two --text-column"
            )
        encoding = "bi" if config.pair_encoding == "bi" else "cross"
        return self.use_encoding(config, backbone, prep, splits, encoding)

    def encoding_choices(self, config: Any, prep: TextPreprocessing) -> tuple[str, ...]:
        """--pair-encoding auto on sentence pairs: the runner trains each encoding and keeps the
        better on validation (`runner._best_encoding`); nothing to choose for single texts."""
        if not prep.pairs or config.pair_encoding != "auto" or prep.layers != 1:
            return ()  # --feature-layers N: a bi-encoder pools the last layer alone, so cross
        return PAIR_ENCODINGS

    def use_encoding(
        self, config: Any, backbone: Any, prep: TextPreprocessing, splits: DataSplits, encoding: str
    ) -> TextPreprocessing:
        """The body set to encode pairs as `encoding` says (single texts: unchanged), and the
        preprocessing that records it, its length read from the data unless --max-length is given.
        A bi-encoder's features: `_pair_features`."""
        if prep.pairs:
            prep = prep.with_pair_encoding(encoding, _pair_features(splits))
            if prep.bi and prep.layers != 1:
                raise ConfigError(
                    "--feature-layers is for single texts and cross-encoded pairs, not --pair-encoding bi"
                )
            self.apply_preprocessing(backbone, prep)
        if config.max_length:
            return prep.with_length(config.max_length)
        return length_from_data(backbone.tokenizer, splits.train.sources, prep)

    def lr_mult(self, prep: TextPreprocessing) -> float | None:
        """A bi-encoder regressing its cosine trains every layer at one rate, as Sentence-BERT does
        (Reimers & Gurevych 2019: 2e-5 for all, which the head's 2e-4 after the probe, x0.1, gives);
        other text fine-tuning decays the rate by --lr-mult from the head down."""
        return 1.0 if self.fine_tunes_from_probe(prep) else None

    def fine_tunes_from_probe(self, prep: TextPreprocessing) -> bool:
        """A bi-encoder regressing the cosine of its two embeddings continues from the probe's
        calibration of that cosine (a fresh one-input head would start at a random sign and
        scale); other text fine-tuning starts its head afresh (`TEXT_DEFAULTS`)."""
        return prep.bi and prep.pair_features == "cosine"

    def apply_preprocessing(self, backbone: Any, prep: TextPreprocessing) -> None:
        """The body set to pool `prep`'s layers and encode pairs as it records; the width follows."""
        hidden = _hidden_size(backbone)
        backbone.body.layers = prep.layers
        backbone.body.pair_features = prep.pair_features if prep.bi else None
        backbone.num_features = pair_width(hidden, prep.pair_features) if prep.bi else hidden * prep.layers

    def feature_layer_choices(self, config: Any, backbone: Any, n_examples: int) -> tuple[int, ...]:
        """What the linear probe chooses between under --feature-layers auto: the last layer alone,
        or the last FEATURE_LAYERS pooled and concatenated (BERT's best feature-based recipe,
        Devlin et al. 2019, Table 7), when the encoder has that many layers and those features
        fit WIDE_FEATURES_MAX_BYTES (`--feature-layers 4` takes them at any size). A bi-encoder on
        a numeric target chooses instead between the cosine of its two embeddings alone (1: the
        zero-shot similarity, calibrated by the probe) and all its pair features (2)."""
        if backbone.body.pair_features is not None:
            similarity = backbone.body.pair_features != "concat"
            return (1, 2) if similarity and config.feature_layers == "auto" else ()
        if config.feature_layers != "auto" or _encoder_layers(backbone) < FEATURE_LAYERS:
            return ()
        width = backbone.num_features // backbone.body.layers * FEATURE_LAYERS
        if n_examples * width * 4 > WIDE_FEATURES_MAX_BYTES:
            return ()
        return (1, FEATURE_LAYERS)

    def use_feature_layers(self, backbone: Any, prep: TextPreprocessing, layers: int) -> TextPreprocessing:
        """The body pools the last `layers` layers; the backbone's feature width follows. For a
        bi-encoder on a numeric target, 1 is the cosine alone and 2 all the pair features."""
        if backbone.body.pair_features is not None:
            if backbone.body.pair_features == "concat":
                return prep  # pair classes: one set of features
            prep = prep.with_pair_encoding("bi", "cosine" if layers == 1 else "similarity")
            self.apply_preprocessing(backbone, prep)
            return prep
        available = _encoder_layers(backbone)
        if layers > available:
            raise ConfigError(f"--feature-layers {layers}: {backbone.name} has {available} layers")
        hidden = backbone.num_features // backbone.body.layers
        backbone.body.layers, backbone.num_features = layers, hidden * layers
        return prep.with_layers(layers)

    def feature_choice_name(self, prep: TextPreprocessing, layers: int) -> str:
        """For people: what a choice of `feature_layer_choices` pools."""
        if prep.bi:
            return "the cosine of the two embeddings" if layers == 1 else "[u, v, |u-v|, u*v, cos]"
        return f"the last {layers} layer(s)"

    def preprocessing_from_dict(self, d: dict[str, Any]) -> TextPreprocessing:
        return TextPreprocessing.from_dict(d)

    def extra_frozen(self, backbone: Any) -> list[nn.Parameter]:
        """The token-embedding matrix: half of a small encoder's weights (and of each optimizer
        step), only the rows of words in a batch get gradients, and weight decay would shrink all
        the others."""
        return [backbone.body.encoder.get_input_embeddings().weight]

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device)

    def training_set(
        self, config: Any, backbone: Any, prep: TextPreprocessing, data: Labelled, skipped: list[SkippedFile]
    ) -> _TrainingTexts:
        ids = token_ids(backbone.tokenizer, data.sources, prep)
        return _TrainingTexts(ids, data.labels, Padding(prep.pad_id, prep.max_length))

    def eval_set(
        self, backbone: Any, prep: TextPreprocessing, data: Labelled, skipped: list[SkippedFile]
    ) -> _EvalTexts:
        ids = token_ids(backbone.tokenizer, data.sources, prep)
        return _EvalTexts(ids, data.labels, Padding(prep.pad_id, prep.max_length), data.sources)

    def encode(
        self,
        backbone: Any,
        prep: TextPreprocessing,
        sources: Sequence[Any],
        *,
        flip: bool,
        batch_size: int,
        desc: str,
        engine: str = "auto",
    ) -> Features:
        # PyTorch only: the encoder's variable-length batches are not exported (graft.runtime.engine is
        # for fixed-shape image batches)
        from ..runtime.device import module_device
        from ..runtime.inference import forward_all

        started = time.perf_counter()
        ids = token_ids(backbone.tokenizer, sources, prep)
        padding = Padding(prep.pad_id, prep.max_length)
        batches = sorted_batches(ids, padding, batch_size, module_device(backbone.body))
        values = forward_all(backbone.body, batches, len(ids)).numpy().astype(np.float32)
        return Features(
            values, np.ones(len(ids), dtype=bool), {}, time.perf_counter() - started, cached=False
        )

    def fingerprint(self, sources: Sequence[Any]) -> str:
        h = hashlib.sha256()
        for text in sources:
            h.update(str(text).encode("utf-8", "surrogatepass") + b"\x00")
        return h.hexdigest()

    def show(self, source: Any, limit: int = 400) -> dict[str, str]:
        """An example for people (the report's highest-loss table): the text, cut at `limit` characters."""
        first, second = pair_of(source)
        text = first if second is None else f"{first}  ‖  {second}"
        return {"text": text if len(text) <= limit else text[: limit - 1] + "…"}

    def bundle_extras(self, backbone: Any) -> dict[str, Any]:
        # the encoder's config: the bundle rebuilds it with no hub access
        return {"config": backbone.model_config}

    def bundle_assets(self, backbone: Any) -> dict[str, Callable[[Path], None]]:
        """Folders written beside the weights: the tokenizer's own JSON and text files."""
        return {"tokenizer": lambda folder: backbone.tokenizer.save_pretrained(str(folder))}

    def rebuild_body(self, meta: dict[str, Any]) -> tuple[nn.Module, int]:
        from ..backbones._text import rebuild_text

        prep = TextPreprocessing.from_dict(meta["preprocessing"])
        return rebuild_text(meta["backbone"]["config"], prep), int(meta["backbone"]["num_features"])

    def input_pipeline(
        self, prep: TextPreprocessing, backbone: Any = None, run_dir: Path | None = None
    ) -> _TextInputs:
        if backbone is not None:
            return _TextInputs(backbone.tokenizer, prep)
        from ..backbones._text import load_tokenizer

        if run_dir is None or not (Path(run_dir) / "tokenizer").is_dir():
            raise DataError(f"{run_dir}: the text bundle has no tokenizer/ folder; train it again")
        return _TextInputs(load_tokenizer(Path(run_dir) / "tokenizer"), prep)
