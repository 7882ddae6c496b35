"""What the provider server was told to answer and what it recorded, shared by the
caller's thread and the handler threads under one condition variable."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from nasca_core.testing._replies import Failure, Reply, Usage


@dataclass
class RecordedRequest:
    """One HTTP request the server received, with what it answered.

    ``usage`` is exactly what the response reported (None for errors, models and
    token counting); ``prompt`` is the text whose token count is ``usage.input_tokens``
    when no override was given. ``done`` turns True once the last byte was written or
    the client went away (``aborted``); ``ProviderServer.wait_idle()`` waits for that.
    """

    method: str
    path: str
    endpoint: str
    headers: dict[str, str]  # names lower-cased
    json: Any
    received_at: float
    request_id: str
    stream: bool = False
    status: int = 0
    usage: Usage | None = None
    reply: Reply | None = None
    prompt: str | None = None
    aborted: bool = False
    done: bool = False

    @property
    def model(self) -> str | None:
        body = self.json
        return body.get("model") if isinstance(body, dict) else None


class State:
    """Queued replies and failures, recorded requests and errors; hold ``cond`` to read them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.replies: deque[Reply] = deque()
        self.failures: deque[Failure] = deque()
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.in_flight = 0

    def record(self, record: RecordedRequest) -> None:
        with self.cond:
            self.requests.append(record)
            self.in_flight += 1

    def finish(self, record: RecordedRequest) -> None:
        with self.cond:
            record.done = True
            self.in_flight -= 1
            self.cond.notify_all()

    def error(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)

    def take_failure(self, endpoint: str) -> Failure | None:
        with self.cond:
            for failure in self.failures:
                if failure.endpoint in (None, endpoint):
                    self.failures.remove(failure)
                    return failure
        return None

    def take_reply(self) -> Reply | None:
        with self.cond:
            return self.replies.popleft() if self.replies else None
