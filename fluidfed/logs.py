"""Warnings that may come thousands a second (a full disk fails the write of every block a
worker fetches): said once, then at most once per `seconds`, each saying how many like it
went unsaid since. Pure: the clock is given (the monotonic one by default)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


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
