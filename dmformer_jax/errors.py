"""Errors a user can fix from the command line.

`train.py` prints a `UserError` as one line (``error: <message>``) and exits with
status 2, without a traceback: the message itself says what is wrong and how to fix it.
"""


class UserError(Exception):
    """A mistake in the user's input (config, paths, data, checkpoints)."""


class ConfigError(UserError):
    """An unknown config key, a wrong type or an inconsistent value."""


class DataError(UserError):
    """A missing or unusable dataset, data_dir or manual_dir."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run (wrong variant, corrupt, ...)."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (bad path, permission denied, disk full)."""
