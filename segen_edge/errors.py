"""Errors raised by segen-edge. Each message says what arrived, what was expected, and the fix."""

from __future__ import annotations


class SegenError(Exception):
    """Base class: the CLI prints the message as one line and exits 1."""


class BadInputError(SegenError, ValueError):
    """An input file (image) that cannot be used."""


class ModelError(SegenError, ValueError):
    """A model file that is missing, not ONNX, lacks metadata or does not fit the verb."""


class MetadataError(ModelError):
    """A `segen.*` metadata key that is missing or malformed."""


class ProviderError(SegenError):
    """An execution provider that was asked for but did not load."""


class MissingExtraError(SegenError):
    """An optional dependency group (pip extra) that is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the '{extra}' extra, which is not installed; "
            f"install it with: pip install 'segen-edge[{extra}]'"
        )
        self.extra = extra
