"""Errors raised by export. Each is a SegenError, so the CLI prints one line and exits 1."""

from __future__ import annotations

from segen_edge.errors import SegenError


class ExportError(SegenError):
    """A run that cannot be exported, or an export that fails its checks."""


class CalibrationError(ExportError, ValueError):
    """A calibration folder that is missing, empty or holds unreadable images."""


class VerificationError(ExportError):
    """An exported model whose outputs do not match the Keras model's."""
