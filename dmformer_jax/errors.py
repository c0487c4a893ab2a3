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


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of ``exc``'s message (its type name when empty), cut to ``limit``.

    A ``KeyError``'s quotes are dropped: ``KeyError('x not found')`` gives ``x not found``.
    """
    text = str(exc).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]
