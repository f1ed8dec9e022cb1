"""Warnings that may come thousands a second (a full disk fails the write of every block a
worker fetches): said once, then at most once per `seconds`, each saying how many like it
went unsaid since. Pure: the clock is given (the monotonic one by default)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Seldom:
    """One kind of warning on `logger`, said at most once per `seconds`."""

    def __init__(
        self,
        logger: logging.Logger,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.seconds = seconds
        self.clock = clock
        self._next = float("-inf")  # when the next one may be said
        self.unsaid = 0  # like it since the last one said

    def warning(self, msg: str, *args: object) -> bool:
        """Say `msg % args` now if the last one said is `seconds` old (with how many went
        unsaid since), else count it; whether it was said."""
        now = self.clock()
        if now < self._next:
            self.unsaid += 1
            return False
        if self.unsaid:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, self.unsaid, self.seconds)
        self.logger.warning(msg, *args)
        self._next = now + self.seconds
        self.unsaid = 0
        return True
