"""The version of graft (one place: the package, the CLI and the bundles read it here)."""

__version__ = "0.1.0"
