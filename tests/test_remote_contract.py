"""The ledger contract's public-API scenarios (tests/test_ledger_contract.py), run on the
remote client: each scenario's Nasca is ``Nasca(url, api_key=...)`` talking to a real
``nasca serve`` app on a real uvicorn over a real Redis.

The app is ``create_app`` on a uvicorn thread in this process, not a ``nasca serve``
process, because the scenarios move the clock: windows reset, holds expire, a settle lands
in the window where the call ended. A server in this process reads the test's FakeClock; a
separate process would read the wall clock and those scenarios could not run. What only a
real process shows (keys from the environment, a server killed mid-run and restarted) is
tested on ``nasca serve`` itself in tests/test_remote.py (``_remote.ServeProcess``)."""

from __future__ import annotations

import asyncio
import functools
import inspect

import pytest

import tests.test_ledger_contract as contract
from tests import _remote

serve, make_remote = _remote.serve, _remote.make_remote  # fixtures

pytestmark = pytest.mark.redis

# The scenarios that use only the public API (the others reach into the store itself).
SCENARIOS = [
    contract.test_reserve_settle_counts_every_window,
    contract.test_block_when_window_spent_and_error_fields,
    contract.test_holds_count_until_settled_or_released,
    contract.test_strict_admits_only_when_estimate_fits,
    contract.test_settle_is_idempotent_and_survives_expired_hold,
    contract.test_windows_reset_on_the_calendar,
    contract.test_settle_lands_in_the_window_where_the_call_ended,
    contract.test_timezone_windows,
    contract.test_set_tier_and_user_tier_apply_in_every_process,
    contract.test_user_context_threads_and_tasks,
    contract.test_seed_style_user_callables,
    contract.test_concurrent_callers_overspend_at_most_one_call,
    contract.test_async_concurrent_strict_never_overspends,
    contract.test_many_holds_in_flight_are_summed_and_expire,
]
BAD_INPUT = next(m for m in contract.test_bad_input_is_typed_and_changes_nothing.pytestmark
                 if m.name == "parametrize").args[1]


def _run(scenario, **fixtures):
    wanted = {k: v for k, v in fixtures.items() if k in inspect.signature(scenario).parameters}
    result = scenario(**wanted)
    if inspect.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__.removeprefix("test_") for s in SCENARIOS])
def test_contract_on_the_remote_client(scenario, make_remote, clock):
    _run(scenario, make_nasca=_as_owner(make_remote), clock=clock, backend="remote")


@pytest.mark.parametrize("call", BAD_INPUT, ids=[f"bad{i}" for i in range(len(BAD_INPUT))])
def test_bad_input_on_the_remote_client(call, make_remote):
    contract.test_bad_input_is_typed_and_changes_nothing(_as_owner(make_remote), call)


def _as_owner(make_remote):
    # The scenarios set tiers and grant credits, as the owner does: with an admin key
    # (NASCA_ADMIN_API_KEYS); what a plain key may not do is tests/test_remote_server.py's.
    return functools.partial(make_remote, api_key=_remote.ADMIN_KEY)
