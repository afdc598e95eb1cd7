"""The error every format reader raises for a folder it cannot read exactly."""

from __future__ import annotations

from .._runtime.errors import DataError


class FormatError(DataError):
    """An SAE folder (saekit's own or another library's) cannot be read, or cannot be read
    exactly; the message names the file and why."""
