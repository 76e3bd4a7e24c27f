"""The errors a user can cause and fix: each ends a command with one ``error:`` line.

Every error class the stages raise for bad input, bad files or bad settings derives from
:class:`UserError`; :func:`scalemm.cli.run` prints it as one line and exits with its
``exit_code``. Anything else is a bug: the command line prints one line too, but keeps the
traceback in a file it names (see :mod:`scalemm.cli`).
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a path, a file, a setting); one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration file or value a user must fix."""


class StoreError(UserError, RuntimeError):
    """A feature store is missing, unreadable or does not fit the others."""


class ClusterError(UserError, ConnectionError):
    """A Ray cluster that was named does not answer, or a Ray head that did not start."""
