"""Errors that the CLI turns into one clear line instead of a traceback."""


class CapsgenError(Exception):
    """A user-facing problem: bad input, a missing file, an unknown option.

    The message must fit on one line and say what is wrong and how to fix it.
    """


class DataError(CapsgenError):
    """A dataset file is missing, truncated, corrupt or of the wrong shape."""


class ConfigError(CapsgenError):
    """An unknown model, dataset, option or ``--set`` key, or a bad value."""
