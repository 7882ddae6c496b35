"""A real redis-py client retrying against a stalled Redis: the reserve script then runs more
than once on the server, and must hold once."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from nasca_core import Nasca, Tier
from tests.conftest import RedisProcess, _free_port, _need_redis


def _evalsha_calls(admin: redis.Redis) -> int:
    stats = admin.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


@pytest.mark.redis
def test_a_reserve_retried_after_a_stall_holds_once():
    _need_redis()
    with tempfile.TemporaryDirectory(prefix="nasca-stall-") as tmp:
        server = RedisProcess(_free_port(), Path(tmp), "--enable-debug-command", "yes")
        try:
            # What redis-py does by default (retries on timeout), with a short socket timeout
            # so a stall of the server looks like a lost reply.
            client = redis.Redis(port=server.port, socket_timeout=0.2,
                                 retry=Retry(ConstantBackoff(0.05), 10))
            admin = redis.Redis(port=server.port)
            n = Nasca(client, tiers={"t": Tier(daily=1)}, default_tier="t",
                      namespace=f"st{uuid.uuid4().hex[:8]}")
            n.release(n.reserve("0.01", user="u"))  # scripts loaded, connection warm
            before = _evalsha_calls(admin)
            stall = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", "0.6"))
            stall.start()
            time.sleep(0.05)  # the server is asleep when the reserve is sent
            r = n.reserve("0.40", user="u")
            stall.join()
            runs = _evalsha_calls(admin) - before
            assert runs >= 2, "the client did not retry: the test proves nothing"
            u = n.get_usage("u")
            assert u.in_flight == Decimal("0.40")  # held once, however many times it ran
            n.settle(r, "0.40")
            u = n.get_usage("u")
            assert u.in_flight == 0 and u.daily_spent == Decimal("0.40")
            n.close()
            admin.close()
        finally:
            server.stop()
