"""Modalities: everything graft knows about one kind of input (images, texts), behind one interface."""

from .base import Modality
from .registry import Detection, detect, get_modality, modalities, modality_of_inputs, register_modality

__all__ = [
    "Detection",
    "Modality",
    "detect",
    "get_modality",
    "modalities",
    "modality_of_inputs",
    "register_modality",
]
