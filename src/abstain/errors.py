"""User-facing errors.

Anything a user can cause (bad config, bad file, bad tensor) raises
:class:`AbstainError` (or a subclass) with a message naming the problem. The CLI
prints the message without a traceback and exits with status 2; ``--debug``
shows the traceback.
"""
from __future__ import annotations


class AbstainError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ConfigError(AbstainError, ValueError):
    """A configuration key or value is invalid."""


class DataError(AbstainError, ValueError):
    """A dataset file is missing, truncated, corrupt or of the wrong format."""


class CheckpointError(AbstainError, ValueError):
    """A checkpoint is missing, corrupt, foreign or of another architecture."""


class InputError(AbstainError, ValueError):
    """A tensor or argument has a bad shape, value or range."""
