"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class BenchError(Exception):
    """A mistake the user can fix (bad flag, bad value, missing data or weights). Never a bug."""

    exit_code = 2


class ConfigError(BenchError):
    """A spec, preset, flag or plugin option is invalid."""


class UnknownPluginError(ConfigError):
    """A plugin name is not in its registry."""


class DataError(BenchError):
    """Data is missing, incomplete or corrupt. The message says how to get it."""


class WeightsError(BenchError):
    """Model weights are missing. The message says what to install or where to put the file."""


class RunDirError(BenchError):
    """The run directory belongs to another spec or is damaged."""


class ReviewPending(BenchError):
    """A manual-review filter is waiting for a person's decisions; the run resumes once they exist."""

    exit_code = 3
