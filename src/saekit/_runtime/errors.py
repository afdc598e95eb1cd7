"""The errors saekit raises for what a user can fix, and the one rule for showing them.

Every anticipated failure (a bad flag, a damaged store, a folder in use, a non-finite
value) is a :class:`SaekitError`: its message is one line that names the problem and the
fix, and the command line prints it as it is, with exit code 2. Anything else that
escapes is a bug in saekit, reported as one (``saekit.app.cli.main``).

They subclass ValueError so that code catching ValueError around a saekit call keeps
working.
"""

from __future__ import annotations

from typing import Any


class SaekitError(ValueError):
    """A failure the user can act on; the message says what was wrong and how to fix it."""


class ConfigValueError(SaekitError):
    """A configuration value is wrong: a flag, a config-file field, an option.

    ``field`` names the offending field (dotted for nested sections, e.g. "train.lr") and
    ``value`` is what it got, so that the command line can name the flag instead."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        requirement: str | None = None,
        example: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field, self.value, self.requirement, self.example = field, value, requirement, example


class UsageError(SaekitError):
    """An argument or input does not fit what was asked (sizes, shapes, paths, combinations)."""


class FolderError(SaekitError):
    """An output folder cannot be used: it is in use, holds other work, or is not a folder."""


class DataError(SaekitError):
    """Input data is missing, damaged, or does not match its checksums."""


class NonFiniteError(SaekitError):
    """A NaN or infinity reached a loss, a gradient or a weight; the message names where from."""
