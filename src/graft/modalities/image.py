"""Images: folders of class subfolders (or train/ val/ test/) or with a labels.csv/.parquet, CIFAR-10,
saved Hugging Face datasets with an Image column, in-memory images (arrays, PIL, encoded bytes).

Training images are decoded once into uint8 tensors (short side capped at the size training needs)
and augmented per sample; evaluation images are decoded, resized and center-cropped once. Batches
travel to the device as uint8 (4x less to move than floats) and are normalised there.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import Preprocessing, create_backbone
from ..cache import cache_dir
from ..data.decoded import FixedImages, decode_seconds, decode_to_store, is_stored
from ..data.frames import dataset_kind, load_dataset_splits
from ..data.gpu_decode import decoded_batches
from ..data.image_sets import (
    LABELS_TABLE,
    ImageColumns,
    image_column_of,
    image_paths_in,
    image_table,
    is_table_file,
    labels_table,
    load_image_data,
    read_image_table,
    split_tables,
)
from ..data.images import (
    IMAGE_EXTENSIONS,
    TEST_NAMES,
    VAL_NAMES,
    find_subdir,
    image_files_below,
    load_rgb,
    resize_short_side,
    scan_image_folder,
)
from ..data.memory import EpochBatches, MemoryDataset, train_transform
from ..data.pipeline import default_workers, ignore_interrupts, interruptible, iterate_batches, normalize
from ..data.splits import DataSplits, Labelled, SkippedFile, TableLabels
from ..distributed import ranks, shards
from ..errors import ConfigError, DataError, UnreadableImage
from ..progress import Progress
from ..runtime.device import to_device
from .base import Batch, Defaults, Features, StrategyDefaults
from .image_sizes import progressive_sizes, takes_size

# Linear probes on standardised features: AdamW at 1e-3 with a one-cycle schedule over 30 cheap
# epochs is the usual recipe (MAE/DINO linear evaluation use the same order of magnitude); large
# batches keep head training on cached features in the milliseconds. Fine-tuning: AdamW 1e-3 for
# the head, 1e-4 at the stem (lr_mult 10), batches of 64 fit a laptop; one head-only epoch first.
IMAGE_DEFAULTS = Defaults(
    strategies={
        "linear": StrategyDefaults(epochs=30, lr=1e-3, batch_size=256),
        # --epochs counts the epochs that train the backbone: 1 head-only (a probe) + 4, as before
        "finetune": StrategyDefaults(epochs=4, lr=1e-3, batch_size=64, freeze_epochs=1),
        "gradual": StrategyDefaults(epochs=5, lr=1e-3, batch_size=64),
    },
    min_finetune_steps=0,
    warmup_share=0.25,
)


def _columns(config: Any) -> ImageColumns:
    """How a training config names a table's columns (no config: the defaults)."""
    if config is None:
        return ImageColumns(None, "text", "label")
    return ImageColumns(config.image_column, config.text_column, config.label_column)


def _images_named(tables: Sequence[Path], columns: ImageColumns) -> list[str]:
    """Tables of image paths (the first decides) and the images the first one's first rows name;
    nothing for tables of texts: what detection counts."""
    from ..data.tables import table_sample

    column = image_column_of(tables[0], columns) if tables else None
    if column is None:
        return []
    named = (tables[0].parent / str(value).strip() for value in table_sample(tables[0])[column])
    return [*map(str, tables), *(str(p) for p in named if p.is_file())]


class _EpochTransforms:
    """epoch -> the training transform at that epoch's crop size (progressive resizing's schedule),
    one transform per size; picklable, for loader workers."""

    def __init__(self, prep: Preprocessing, augment: str, sizes: list[int]) -> None:
        self.prep, self.augment, self.sizes = prep, augment, sizes
        self.made: dict[int, Any] = {}

    def __call__(self, epoch: int) -> Any:
        size = self.sizes[min(epoch, len(self.sizes) - 1)] if self.sizes else self.prep.input_size
        if size not in self.made:
            self.made[size] = train_transform(self.prep.with_size(size), self.augment)
        return self.made[size]


class _TrainingImages:
    def __init__(
        self,
        images: Sequence[torch.Tensor],
        labels: np.ndarray,
        prep: Preprocessing,
        augment: str,
        workers: int | None = None,
    ):
        self.prep, self.augment, self.images = prep, augment, images
        self.dataset = MemoryDataset(images, labels, train_transform(prep, augment))
        self.plain = MemoryDataset(images, labels, train_transform(prep, "none"))
        self.labels = self.dataset.labels
        self.sizes: list[int] = []  # training crop size per epoch (grow_inputs); empty: the full size
        self.workers = default_workers() if workers is None else workers
        self._loader: tuple[Any, DataLoader] | None = None  # (what it was built for, the loader)

    def grow_inputs(self, epochs: int, model: nn.Module) -> str | None:
        sizes = progressive_sizes(self.prep.input_size, epochs)
        self.sizes = []
        if len(set(sizes)) <= 1:
            return None
        if not takes_size(model, min(sizes)):
            return f"off: the network takes only {self.prep.input_size} px inputs"
        self.sizes = sizes
        return f"training crops {' -> '.join(map(str, sizes))} px"

    def __len__(self) -> int:
        return len(self.dataset)

    def steps_per_epoch(self, batch_size: int) -> int:
        # the last, partial batch is dropped when there is more than one batch
        return max(1, len(self) // batch_size) if len(self) > batch_size else 1

    def _loader_for(self, batch_size: int, seed: int, device: torch.device) -> DataLoader:
        """One loader for every epoch, its workers kept between epochs (persistent): rebuilt only
        when what it serves changes (a new size schedule, batch size or seed)."""
        key = (batch_size, seed, device.type, tuple(self.sizes))
        if self._loader is None or self._loader[0] != key:
            self.close()
            by_epoch = _EpochTransforms(self.prep, self.augment, list(self.sizes))
            dataset = MemoryDataset(self.images, self.labels, self.dataset.transform, seed, by_epoch)
            options: dict[str, Any] = {}
            if self.workers:
                options = dict(persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_interrupts)
            order = EpochBatches(len(dataset), batch_size, seed, drop_last=len(dataset) > batch_size)
            loader = DataLoader(
                dataset,
                batch_sampler=order,
                num_workers=self.workers,
                generator=torch.Generator().manual_seed(seed),  # its workers' seeds: not dropout's stream
                pin_memory=device.type == "cuda",
                **options,
            )
            self._loader = (key, loader)
        return self._loader[1]

    def close(self) -> None:
        """Stop the loader's workers (they also stop when this object is dropped)."""
        self._loader = None

    def batches(self, batch_size: int, seed: int, device: torch.device) -> Callable[[int], Iterator[Batch]]:
        prep = self.prep

        def batches(epoch: int) -> Iterator[Batch]:
            loader = self._loader_for(batch_size, seed, device)
            loader.batch_sampler.set_epoch(epoch)
            for x, y in interruptible(shards.shard_loader(loader)):  # this process's part of each batch
                yield normalize(x.to(device, non_blocking=True), prep), y.to(device, non_blocking=True)

        return batches

    def plain_inputs(self, limit: int, device: torch.device) -> Iterator[torch.Tensor]:
        n = min(limit, len(self))
        for start in range(0, n, 64):
            x = torch.stack([self.plain[i][0] for i in range(start, min(n, start + 64))])
            yield normalize(x.to(device), self.prep)

    def timing_batches(self, batch_size: int, device: torch.device, count: int) -> list[Batch]:
        n = min(batch_size, len(self))
        x = torch.stack([self.dataset[i][0] for i in range(n)])
        y = torch.stack([self.dataset[i][1] for i in range(n)])
        return [(normalize(x.to(device), self.prep), y.to(device))] * count


class _EvalImages:
    def __init__(self, images: FixedImages, labels: torch.Tensor, prep: Preprocessing, sources: list[Any]):
        self.images, self.labels, self.prep, self.sources = images, labels, prep, sources

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, device: torch.device, batch_size: int = 128
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            index = torch.arange(start, min(len(self), start + batch_size))
            yield index, normalize(to_device(self.images.range(start, start + batch_size), device), self.prep)


class _ImageInputs:
    """A bundle's input side: any image source -> resized, cropped, normalised NCHW batches."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep

    def as_list(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, str | Path | Image.Image | bytes) or (
            isinstance(inputs, np.ndarray)
            and inputs.ndim in (2, 3)
            and inputs.dtype == np.uint8
            and inputs.shape[-1] in (1, 3, 4)
        ):
            return [inputs]
        return list(inputs)

    def batches(
        self,
        inputs: Sequence[Any],
        batch_size: int,
        device: torch.device,
        on_failure: Callable[[int, str], None] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, normalised images) per batch. An unreadable input raises `UnreadableImage`,
        or, given `on_failure`, is reported to it (position, one-line reason) and left out."""
        inputs = self.as_list(inputs)
        workers = 0 if len(inputs) <= 4 * batch_size else None  # worker start-up costs more than small jobs
        for batch in iterate_batches(
            inputs, self.prep, batch_size, workers=workers, decode_size=self.prep.resize_size
        ):
            if batch.failures and on_failure is None:
                raise UnreadableImage(batch.failures[0][1])
            for index, reason in batch.failures:
                on_failure(index, reason)  # type: ignore[misc]
            if len(batch.indices):
                yield batch.indices, normalize(batch.images.to(device), self.prep)

    def preprocess(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        """The float32 NCHW array the network takes (resized, cropped, normalised)."""
        cpu = torch.device("cpu")
        arrays = [x.contiguous().numpy() for _, x in self.batches(inputs, batch_size, cpu)]
        return np.concatenate(arrays) if arrays else np.zeros((0, 3, 1, 1), np.float32)


class ImageModality:
    name = "image"
    unit = "images"
    # served images/s stop growing past batches of 32 (`python -m bench serve`, 2 cores)
    serve_batch = 32
    size_option = "--image-size"  # smaller inputs, for advice
    default_backbone = "efficientnet_lite0"
    packaged_backbones = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    # timm's, by published transfer results and size (docs/guide/pick.md says why each)
    online_backbones = {
        "cpu": ("timm/efficientnet_b0", "timm/convnext_nano"),
        "gpu": ("timm/efficientnet_b0", "timm/convnext_nano", "timm/resnet50", "timm/convnext_tiny"),
    }
    defaults = IMAGE_DEFAULTS
    request_field = "file"  # what `graft serve` takes: an uploaded image
    mirrors = True

    @staticmethod
    def mirror(batch: torch.Tensor) -> torch.Tensor:
        """An NCHW batch, left and right swapped."""
        return batch.flip(3)

    def inputs_in(self, path: Path, config: Any = None) -> list[str]:
        if str(path) == "cifar10" and not path.exists():
            return ["cifar10"]
        kind = dataset_kind(path)  # a saved Hugging Face dataset: its Image column decides
        if kind is not None:
            return [str(path)] if kind == self.name else []
        tables = [path] if is_table_file(path) else [t for t in split_tables(path) if t is not None]
        named = _images_named(tables, _columns(config))
        if path.is_file():
            return named
            return [str(path)] if path.suffix.lower() in IMAGE_EXTENSIONS else []
        if not path.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if Path(dirpath) == path:
                continue  # class folders hold the images; files beside them are not read
            found += [
                os.path.join(dirpath, f) for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS
            ]
        return named + [f for f in found if f not in named]

    def inputs_of_folder(self, folder: Path) -> list[str]:
        """Every image file below `folder` (hidden ones left out), for `graft predict FOLDER`."""
        return image_files_below(folder)

    def read_upload(self, data: bytes, name: str, prep: Any = None) -> Image.Image:
        """An uploaded image, decoded whole (a truncated file is refused here, not mid-batch). Given
        the model's `prep`: decoded and resized as prediction does (a large JPEG at a reduced scale,
        its short side to the resize), in the caller's thread, so that the batch only crops it."""
        try:
            if prep is not None:
                image = load_rgb(data, prep.resize_size)
                return resize_short_side(image, prep.resize_size, prep.interpolation)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.copy()
        except (UnidentifiedImageError, UnreadableImage, OSError, SyntaxError, ValueError):
            raise DataError(
                f"{name} is not an image graft can read: send a JPEG, PNG, WebP, BMP or GIF"
            ) from None

    def example_input(self) -> Image.Image:
        return Image.new("RGB", (64, 48), (128, 128, 128))

    def accepts(self, item: Any) -> bool:
        if isinstance(item, np.ndarray):  # pixels: numbers (an array of strings is texts)
            return item.dtype.kind in "uifb"
        if isinstance(item, Image.Image | bytes):  # bytes: an encoded image file
            return True
        return (
            isinstance(item, str | Path)
            and Path(item).suffix.lower() in IMAGE_EXTENSIONS
            and Path(item).is_file()
        )

    def check(self, config: Any) -> None:
        if config.adapt_lm or config.unlabelled:
            raise ConfigError(
                "--adapt-lm and --unlabelled are for text data (masked-LM adaptation of an encoder)"
            )
        if config.max_length is not None:
            raise ConfigError("--max-length is for text data; images take --image-size")
        if config.feature_layers not in ("auto", "1"):
            raise ConfigError(
                "--feature-layers is for text encoders; an image backbone gives its pooled last stage"
            )
        if config.pair_encoding != "auto":
            raise ConfigError("--pair-encoding is for sentence pairs (two --text-column), not images")

    def feature_layer_choices(self, config: Any, backbone: Any, n_examples: int) -> tuple[int, ...]:
        """The pooled last stage alone: no choice for the probe to make."""
        return ()

    def use_feature_layers(self, backbone: Any, prep: Any, layers: int) -> Any:
        return prep

    def feature_choice_name(self, prep: Any, layers: int) -> str:
        return "the pooled last stage"

    def lr_mult(self, prep: Any) -> float | None:
        return None

    def fine_tunes_from_probe(self, prep: Any) -> bool:
        """LP-FT's head-only phase decides (`training.job.probes_first`)."""
        return False

    def apply_preprocessing(self, backbone: Any, prep: Any) -> None:
        """An image body computes one kind of features."""

    def encoding_choices(self, config: Any, prep: Any) -> tuple[str, ...]:
        """An image has one encoding."""
        return ()

    def use_encoding(self, config: Any, backbone: Any, prep: Any, splits: Any, encoding: str) -> Any:
        return prep

    def load_splits(self, config: Any) -> DataSplits:
        how = TableLabels(config.label_column, config.task, config.label_separator)
        if dataset_kind(config.data) is not None:
            return load_dataset_splits(
                config.data, config.val, config.test, config.image_column or config.text_column, how,
                config.val_fraction, config.seed,
            )
        data = Path(config.data)
        tables = is_table_file(data) or labels_table(data) is not None or bool(split_tables(data))
        if config.task in ("multi", "regression") and config.data != "cifar10" and not tables:
            raise ConfigError(
                f"--task {config.task}: {config.data} has no {LABELS_TABLE}; images take several labels or "
                "numbers from a table: a labels.csv beside them (a `file` column and the label column), "
                "or a table with a column of image paths"
            )
        return load_image_data(
            config.data, config.val, config.test, config.val_fraction, config.seed, config.data_root, how,
            _columns(config),
        )

    def read_labelled(
        self, path: str | Path, meta: dict[str, Any], classes: Sequence[str]
    ) -> tuple[Labelled, list[SkippedFile]]:
        path = Path(path)
        if is_table_file(path) or labels_table(path) is not None:  # a table of images: any task
            from ..tasks import task_from_meta

            skipped: list[SkippedFile] = []
            recipe = meta.get("recipe", {})
            columns = ImageColumns(recipe.get("image_column"), "", recipe.get("label_column", "label"))
            table, column = image_table(path, columns)
            return read_image_table(table, column, task_from_meta(meta), columns.label, skipped), skipped
        data, _, skipped = scan_image_folder(path, classes=classes)
        return data, skipped

    def inputs_of_file(self, path: Path, meta: dict[str, Any]) -> list[str]:
        return image_paths_in(path, meta.get("recipe", {}).get("image_column"))

    def evaluation_split(self, path: Path, classes: Sequence[str]) -> tuple[Path, str] | None:
        tables = split_tables(path)  # train.csv [dev.csv] [test.csv] of image paths
        if tables:
            held_out = ((tables[2], "test"), (tables[1], "validation"))
            return next(((table, split) for table, split in held_out if table is not None), None)
        if not path.is_dir() or find_subdir(path, ("train",)) is None:
            return None
        for names, split in ((TEST_NAMES, "test"), (VAL_NAMES, "validation")):
            found = find_subdir(path, names)
            if found is not None and found.name not in classes:
                return found, split
        return None

    def preprocessing(self, config: Any, backbone: Any, splits: DataSplits) -> Preprocessing:
        return backbone.preprocessing.with_size(config.image_size)

    def preprocessing_from_dict(self, d: dict[str, Any]) -> Preprocessing:
        return Preprocessing.from_dict(d)

    def extra_frozen(self, backbone: Any) -> list[nn.Parameter]:
        return []

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device=device, memory_format=torch.channels_last)

    def training_set(
        self, config: Any, backbone: Any, prep: Preprocessing, data: Labelled, skipped: list[SkippedFile]
    ) -> _TrainingImages:
        # decoded once, in parallel, into a file read back per image: memory stays flat in the
        # dataset's size, and a second run reads the decoded images instead of decoding again
        store = (data.sources, prep.resize_size, self.fingerprint(data.sources), cache_dir() / "decoded")
        if ranks.world_size() > 1:  # rank 0 decodes; the others read what it wrote
            if ranks.is_main():
                decode_to_store(*store)
            ranks.from_main(None)  # every process waits for it here
        images, failures = decode_to_store(*store)
        skipped.extend(SkippedFile(str(data.sources[i]), reason) for i, reason in failures.items())
        keep = [i for i in range(len(images)) if i not in failures]
        return _TrainingImages(images.subset(keep), np.asarray(data.labels)[keep], prep, config.augment)

    def preparation_seconds(self, prep: Preprocessing, sources: Sequence[Any]) -> float:
        """Seconds per training input of `training_set`'s decoding; 0 when a run decoded them already."""
        store = cache_dir() / "decoded"
        if is_stored(len(sources), prep.resize_size, self.fingerprint(sources), store):
            return 0.0
        return decode_seconds(sources, prep.resize_size)

    def eval_set(
        self, backbone: Any, prep: Preprocessing, data: Labelled, skipped: list[SkippedFile]
    ) -> _EvalImages:
        # decoded once, resized and cropped, to a temporary file read a batch at a time: memory
        # stays flat however large the validation or test set
        images = FixedImages((3, prep.input_size, prep.input_size), cache_dir() / "decoded")
        labels, sources = [], []
        for batch in iterate_batches(data.sources, prep, batch_size=128, decode_size=prep.resize_size):
            skipped.extend(SkippedFile(str(data.sources[i]), r) for i, r in batch.failures)
            images.append(batch.images)
            labels.append(torch.from_numpy(np.asarray(data.labels)[batch.indices.numpy()]))
            sources += [data.sources[i] for i in batch.indices.tolist()]
        labels_tensor = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        return _EvalImages(images, labels_tensor, prep, sources)

    def encode(
        self,
        backbone: Any,
        prep: Preprocessing,
        sources: Sequence[Any],
        *,
        flip: bool,
        batch_size: int,
        desc: str,
        engine: str = "auto",
    ) -> Features:
        """Backbone features per source; `flip` averages them with the mirrored image's. The
        forward pass runs on the engine `graft.runtime.engine.choose_engine` picks for this job."""
        from ..runtime.device import ahead, cuda_tuning, module_device
        from ..runtime.engine import choose_engine
        from ..runtime.inference import OutputRows

        device = module_device(backbone.body)
        # outside inference mode: weights converted inside it could never train again (fine-tuning
        # after a probe trains this very module)
        body = backbone.body.eval().to(memory_format=torch.channels_last)
        rows, ok = OutputRows(len(sources)), np.zeros(len(sources), dtype=bool)
        failures: dict[int, str] = {}
        forward, choice = None, None
        started = time.perf_counter()
        pin = device.type == "cuda"  # pinned batches, copied without waiting, read one ahead
        decoded, decoding = decoded_batches(sources, prep, batch_size, device, pin)  # on the GPU if faster
        batches = ahead(decoded)
        with Progress(len(sources), desc, unit="img") as bar, cuda_tuning(device, tf32=True):
            for batch in batches:
                failures.update(batch.failures)
                if len(batch.indices):
                    x = normalize(batch.images.to(device, non_blocking=True), prep)
                    if forward is None:
                        forward, choice = choose_engine(body, x, len(sources), engine)
                    out = forward(x)
                    if flip:
                        out = (out + forward(x.flip(3))) / 2
                    rows.add(batch.indices, out.flatten(1).float())  # copied back once per chunk
                    ok[batch.indices.numpy()] = True
                bar.update(len(batch.indices) + len(batch.failures))
        done = rows.done()  # None when nothing was readable
        values = done.numpy() if done is not None else np.zeros((len(sources), backbone.num_features), "f4")
        seconds = time.perf_counter() - started
        engine = {**(choice.to_dict() if choice else {}), "decoder": decoding.to_dict()}
        return Features(values, ok, failures, seconds, cached=False, engine=engine)

    def fingerprint(self, sources: Sequence[Any]) -> str:
        """Path, size and mtime of files; the bytes of in-memory images."""
        import hashlib

        h = hashlib.sha256()
        for src in sources:
            if isinstance(src, str | Path):
                st = os.stat(src)
                h.update(f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            elif isinstance(src, bytes):
                h.update(src)
            else:
                h.update(np.ascontiguousarray(np.asarray(src)).tobytes())
        return h.hexdigest()

    def show(self, source: Any, size: int = 96) -> dict[str, str]:
        """An example for people (the report's highest-loss grid): a small JPEG as a data URI."""
        import base64
        import io

        from ..data.images import load_rgb

        try:
            image = load_rgb(source, size)
        except Exception:  # noqa: BLE001 - a file that vanished since training: show its name only
            return {"name": str(source)}
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        name = str(source) if isinstance(source, str | Path) else ""
        return {
            "image": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
            "name": name,
        }

    def bundle_extras(self, backbone: Any) -> dict[str, Any]:
        return {}

    def bundle_assets(self, backbone: Any) -> dict[str, Callable[[Path], None]]:
        return {}

    def rebuild_body(self, meta: dict[str, Any]) -> tuple[nn.Module, int]:
        backbone = create_backbone(meta["backbone"]["name"], pretrained=False)
        return backbone.body, backbone.num_features

    def input_pipeline(
        self, prep: Preprocessing, backbone: Any = None, run_dir: Path | None = None
    ) -> _ImageInputs:
        return _ImageInputs(prep)

    def adaptation_corpus(self, config: Any, splits: DataSplits) -> list[Any]:
        raise ConfigError("--adapt-lm is for text data (masked-LM adaptation of an encoder)")
