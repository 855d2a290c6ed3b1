"""How the command-line tools report a user error: one ``error: ...`` line on stderr, no
traceback, exit status 2."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_USAGE = 2


class UsageError(SystemExit):
    """A user error: exits with status 2; ``str()`` is the line printed (``error: message``)."""

    def __init__(self, message: str):
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (raises ``UsageError``)."""
    error = UsageError(message)
    print(error, file=sys.stderr)
    raise error from None
