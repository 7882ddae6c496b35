"""How long a reserve waits for holds in flight to settle before raising NascaBusyError
(``Nasca(busy_wait=seconds)``): pure timing, shared by the sync and async reserves."""

from __future__ import annotations

import time

from nasca_core._errors import ConfigurationError

_FIRST_PAUSE = 0.02  # seconds; doubled after each busy answer, up to _MAX_PAUSE
_MAX_PAUSE = 0.25


def check_busy_wait(seconds: object) -> float:
    """Raises ConfigurationError unless ``seconds`` is a number from 0 to 60."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
        raise ConfigurationError(f"busy_wait must be a number of seconds from 0 to 60, got {seconds!r}")
    return float(seconds)


class BusyWait:
    """The pauses of one reserve: a burst queues briefly instead of failing, and a reserve
    never waits past its deadline."""

    __slots__ = ("_deadline", "_pause")

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds if seconds > 0 else 0.0
        self._pause = _FIRST_PAUSE

    def next(self) -> float | None:
        """The next pause in seconds, or None when the reserve should raise now."""
        if not self._deadline:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            return None
        pause = min(self._pause, left)
        self._pause = min(self._pause * 2, _MAX_PAUSE)
        return pause


_NO_WAIT = BusyWait(0.0)  # stateless: its next() is always None


def busy_wait_for(seconds: float) -> BusyWait:
    """The pauses of one reserve waiting up to ``seconds``; one shared object when there is no wait."""
    return BusyWait(seconds) if seconds > 0 else _NO_WAIT
