"""User-facing errors: one line on stderr and a non-zero exit, never a traceback wall."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input the user can fix (a mistyped key, a missing folder). The message says how."""


class ConfigError(UserError):
    """A configuration that cannot be composed."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI main: UserError -> 'error: ...' on stderr and exit code 2; Ctrl-C -> 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; re-run the same command to resume", file=sys.stderr)
            return 130

    return wrapper
