"""Deprecated: `graft.onnx_graph` moved to `graft.predict.graph`. It works for one release, with a
DeprecationWarning: every old name is found where it lives now."""

from ._moved import moved as _moved

__getattr__ = _moved(__name__, ("graft.predict.graph",))
