"""The modalities graft knows: the built-in ones (images, texts), registered here on first use, and
any a plugin adds with `register_modality`; `detect` picks the one whose inputs make up a path.
The modalities themselves never import this module."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import Modality


def _load_builtins() -> None:
    # imported on first use: `import graft.modalities` stays light; images first, then texts
    from .image import ImageModality
    from .text import TextModality

    for modality in (ImageModality(), TextModality()):
        register_modality(modality)


_MODALITIES: Registry[Modality] = Registry("modality", _load_builtins)


def register_modality(modality: Modality) -> Modality:
    return _MODALITIES.register(modality.name, modality)


def get_modality(name: str) -> Modality:
    return _MODALITIES.get(name)


def modalities() -> dict[str, Modality]:
    return _MODALITIES.all()


def modality_of_inputs(items: Sequence[Any]) -> Modality:
    """The modality that accepts every one of these in-memory inputs."""
    # a modality that takes any string (texts) is asked last: an image's path is a string too, and
    # a plugin's modality registers after the built-ins
    ordered = sorted(modalities().values(), key=lambda m: bool(m.accepts("\0 not a path")))
    for modality in ordered:
        if items and all(modality.accepts(item) for item in items):
            return modality
    kinds = sorted({type(item).__name__ for item in items}) or ["nothing"]
    raise ConfigError(
        f"cannot tell what these inputs are ({', '.join(kinds)}): give image files or arrays, or texts"
    )


@dataclass
class Detection:
    modality: Modality
    found: dict[str, list[str]] = field(default_factory=dict)  # modality name -> its inputs under the path

    @property
    def ignored(self) -> list[str]:
        """The files another modality would read and the chosen one does not (a table both would
        read is read, not ignored)."""
        kept = set(self.found.get(self.modality.name, []))
        return [f for files in self.found.values() for f in files if f not in kept]


def detect(data: str | Path, default: str = "image", config: Any = None) -> Detection:
    """The modality whose inputs make up most of `data`. A stray README.txt among images (or a
    picture among texts) does not decide: the majority does, and the files it leaves out are
    named in a warning. `config` (a TrainConfig) names a table's columns: a table whose input
    column holds image paths is images."""
    path = Path(data)
    found = {name: m.inputs_in(path, config) for name, m in modalities().items()}
    best = max(found, key=lambda name: (len(found[name]), name == default))
    detection = Detection(get_modality(best), found)
    ignored = detection.ignored
    if ignored and found[best]:
        shown = ", ".join(ignored[:3]) + (f" and {len(ignored) - 3} more" if len(ignored) > 3 else "")
        warnings.warn(
            f"{path} holds {len(found[best])} {detection.modality.unit}; ignoring {len(ignored)} other "
            f"file(s): {shown}",
            UserWarning,
            stacklevel=2,
        )
    return detection
