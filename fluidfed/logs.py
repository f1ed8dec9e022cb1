"""Logging the daemons share.

- Warnings that may come thousands a second (a full disk fails the write of every block a
  worker fetches): said once, then at most once per `seconds`, each saying how many like
  it went unsaid since (`Seldom`; the clock is given, the monotonic one by default).
- No credential in a log line: aiohttp's server logs a request it cannot parse with what
  it read of it, an Authorization header among it (`guard_server_logs`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable

# a bearer token, and fluidfed's own tokens wherever they stand: the admin's (ffa.), a
# cluster's (ffc.), the data path's (ff1.)
# (a quoted header's whitespace may be an escape: b'Bearer\\ttoken')
_CREDENTIAL = re.compile(
    r"(?i)(\bbearer(?:\s|\\[tnr]|\\x[0-9a-f]{2})+)[^\s'\"\\]+|\bff[ac1]\.[\w.~+/=-]+"
)


def redact(text: str) -> str:
    """`text` with every credential it holds shown as ***."""
    return _CREDENTIAL.sub(lambda m: f"{m.group(1) or ''}***", text)


class _Redacting(logging.Filter):
    """A record said with its credentials hidden, its traceback folded into its text; a
    request the server could not parse (the client's error) in one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if isinstance(exc, HttpProcessingError):
                text += f": {type(exc).__name__}: {' '.join(str(exc).split())}"
            else:
                text += "\n" + "".join(traceback.format_exception(exc)).rstrip()
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redact(text), ()
        return True


def guard_server_logs() -> None:
    """Hide credentials in what aiohttp's server logs (a request line or header it could
    not parse is quoted in its error): once per process, before any server starts."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _Redacting) for f in server.filters):
        server.addFilter(_Redacting())


class Seldom:
    """One kind of warning on `logger`, said at most once per `seconds` (from any thread:
    block files are read and removed in threads)."""

    def __init__(
        self,
        logger: logging.Logger,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.seconds = seconds
        self.clock = clock
        self._said = float("-inf")  # when the last one was said
        self.unsaid = 0  # like it since
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> bool:
        """Say `msg % args` now if the last one said is `seconds` old or more (with how
        many went unsaid since), else count it; whether it was said."""
        with self._lock:
            now = self.clock()
            if now < self._said + self.seconds:
                self.unsaid += 1
                return False
            unsaid, self.unsaid = self.unsaid, 0
            since, self._said = now - self._said, now
        if unsaid:
            msg += " (and %d more like it in the %.0f s since the last said)"
            args = (*args, unsaid, since)
        self.logger.warning(msg, *args)
        return True
