"""The lease policy (``_lease_policy``), pure: when a lease may be taken and how big."""

from __future__ import annotations

from nasca_core._lease_policy import (
    LEASE_S,
    MAX_CALLS,
    MIN_CALLS,
    MIN_HOLD_TTL_S,
    ROOM_SHARE,
    SENDER_WAIT_S,
    clear_of_marks,
    lease_size,
    leases_allowed,
)

NO_CAP = (1_000, -1, 10_000, 0, 0, 0, -1)  # daily 1000, no weekly, monthly 10000, no in-flight cap


def test_a_quarter_of_the_room_at_most_64_estimates():
    assert lease_size(NO_CAP, (0, 0, 0), 10, 10) == 990 // ROOM_SHARE  # a quarter of 990 < 64 × 10
    assert lease_size(NO_CAP, (0, 0, 0), 1, 1) == MAX_CALLS * 1
    assert lease_size(NO_CAP, (500, 0, 500), 10, 5) == (1_000 - 500 - 10) // ROOM_SHARE  # 122 < 320


def test_no_lease_near_a_limit_or_without_a_say():
    assert lease_size(NO_CAP, (700, 0, 700), 10, 10) == 0  # 290 // 4 = 72 < 8 × 10
    assert lease_size(NO_CAP, (0, 0, 9_700), 10, 10) == 0  # the monthly window is the near one
    assert lease_size(NO_CAP, (1_000, 0, 1_000), 0, 1) == 0  # spent: credits pay, never leased
    assert lease_size((1_000, -1, -1, 0, 0, 0, 0), (0, 0, 0), 1, 1) == 0  # a cap of 0: no call at all
    assert lease_size(None, (0, 0, 0), 1, 1) == 0  # the store did not say what it applied
    assert lease_size(NO_CAP, (0, 0, 0), 0, 0) == 0  # nothing to carve


def test_no_limit_at_all_gets_the_most():
    assert lease_size((-1, -1, -1, 0, 0, 0, -1), (5, 5, 5), 0, 3) == MAX_CALLS * 3


def test_the_smallest_lease_is_min_calls_estimates():
    room = ROOM_SHARE * MIN_CALLS * 10
    assert lease_size((room, -1, -1, 0, 0, 0, -1), (0, 0, 0), 0, 10) == MIN_CALLS * 10
    assert lease_size((room - 1, -1, -1, 0, 0, 0, -1), (0, 0, 0), 0, 10) == 0


def test_marks_a_lease_could_reach_forbid_it():
    # daily 1000 with a mark at 50%: 100 spent + 10 held + L must stay under 500
    assert lease_size(NO_CAP, (300, 0, 300), 10, 5, (0.5,)) == 172  # 300 + 10 + 172 = 482 < 500
    assert lease_size(NO_CAP, (350, 0, 350), 10, 5, (0.5,)) == 0  # 350 + 10 + 160 = 520: past the mark
    assert lease_size(NO_CAP, (350, 0, 350), 10, 5) == 160  # no marks: a lease
    assert clear_of_marks(NO_CAP, (100, 0, 100), 399, (0.5,))
    assert not clear_of_marks(NO_CAP, (100, 0, 100), 400, (0.5,))
    assert not clear_of_marks(None, (0, 0, 0), 0, (0.5,))
    assert clear_of_marks(None, (0, 0, 0), 0, ())


def test_an_in_flight_cap_does_not_forbid_a_lease():
    assert lease_size((1_000, -1, -1, 0, 0, 0, 64), (0, 0, 0), 1, 1) == MAX_CALLS  # _leases keeps the cap
    assert lease_size((1_000, -1, -1, 0, 0, 0, 1), (0, 0, 0), 1, 1) == MAX_CALLS


def test_no_lease_with_short_lived_holds():
    assert MIN_HOLD_TTL_S == max(60.0, 4 * (LEASE_S + SENDER_WAIT_S)) == 60.0
    assert leases_allowed(900.0) and leases_allowed(60.0)
    assert not leases_allowed(59.9) and not leases_allowed(4 * (LEASE_S + SENDER_WAIT_S))
