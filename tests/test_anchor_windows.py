"""Monthly windows anchored to a billing cycle: pure math, against a simple reference."""

from __future__ import annotations

from calendar import monthrange
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from nasca_core._windows import WindowClock, anchored_month, anchored_period, cycle_window, windows_at

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                               "America/Sao_Paulo", "Asia/Kathmandu")]
T0, T1 = 1_577_836_800, 2_051_222_400  # 2020-01-01 .. 2035-01-01


def reference_period(now: float, anchor: int, tz: ZoneInfo) -> tuple[float, float]:
    """Walk every month boundary from two years before ``now``; the period is the pair of
    consecutive boundaries around it."""
    a = datetime.fromtimestamp(anchor, tz) if anchor else datetime(2000, 1, 1, tzinfo=tz)
    at = datetime.fromtimestamp(now, tz)
    bounds = []
    for k in range(12 * (at.year - 2), 12 * (at.year + 2)):
        y, m = divmod(k, 12)
        day = min(a.day, monthrange(y, m + 1)[1])
        bounds.append(datetime(y, m + 1, day, a.hour, a.minute, a.second, tzinfo=tz).timestamp())
    i = max(i for i, b in enumerate(bounds) if b <= now)
    return bounds[i], bounds[i + 1]


@settings(max_examples=400, deadline=None)
@given(now=st.integers(T0, T1), anchor=st.integers(T0, T1), zone=st.sampled_from(ZONES))
def test_anchored_period_matches_the_reference(now: int, anchor: int, zone: ZoneInfo) -> None:
    start, end = anchored_period(now, anchor, zone)
    assert (start, end) == reference_period(now, anchor, zone)
    assert start <= now < end
    assert 27 * 86400 < end - start < 32 * 86400
    a, s = datetime.fromtimestamp(anchor, zone), datetime.fromtimestamp(start, zone)
    assert s.day == min(a.day, monthrange(s.year, s.month)[1])  # clamped to a short month's end


@settings(max_examples=300, deadline=None)
@given(now=st.integers(T0, T1), zone=st.sampled_from(ZONES))
def test_no_anchor_is_the_calendar_month(now: int, zone: ZoneInfo) -> None:
    ws = windows_at(now, zone)
    assert anchored_month(now, zone, "") == (ws.ids[2], ws.ends[2])


@settings(max_examples=300, deadline=None)
@given(now=st.integers(T0, T1), anchor=st.integers(T0, T1), zone=st.sampled_from(ZONES))
def test_ids_name_one_period_and_change_at_its_end(now: int, anchor: int, zone: ZoneInfo) -> None:
    start, end = anchored_period(now, anchor, zone)
    spec = f"0,0,{anchor}"  # the cycle's months from the start
    wid, wend = anchored_month(now, zone, spec)
    assert wend == end and wid.isdigit() and len(wid) == 14
    assert anchored_month(start, zone, spec)[0] == wid == anchored_month(end - 1, zone, spec)[0]
    after = anchored_month(end, zone, spec)[0]
    assert after != wid and after > wid


def _ts(zone: str, *parts: int) -> float:
    return datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


def test_anchored_on_the_15th_across_a_month_boundary_and_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    anchor = int(_ts("Europe/Paris", 2026, 2, 15, 9, 30))
    spec = f"0,0,{anchor}"
    # Winter time to summer time (29 March): the window still turns at 09:30 local on the 15th.
    march = anchored_month(_ts("Europe/Paris", 2026, 3, 20, 12), paris, spec)
    assert march == ("20260315093000", _ts("Europe/Paris", 2026, 4, 15, 9, 30))
    assert anchored_month(_ts("Europe/Paris", 2026, 4, 15, 9, 29, 59), paris, spec)[0] == march[0]
    assert anchored_month(_ts("Europe/Paris", 2026, 4, 15, 9, 30), paris, spec)[0] == "20260415093000"
    # And back (25 October).
    assert anchored_month(_ts("Europe/Paris", 2026, 11, 1), paris, spec)[0] == "20261015093000"


def test_anchored_on_the_31st_clamps_to_short_months() -> None:
    utc = ZoneInfo("UTC")
    anchor = int(_ts("UTC", 2026, 1, 31, 8))
    assert anchored_month(_ts("UTC", 2026, 2, 28, 7), utc, f"0,0,{anchor}") == (
        "20260131080000", _ts("UTC", 2026, 2, 28, 8))
    assert anchored_month(_ts("UTC", 2026, 3, 1), utc, f"0,0,{anchor}") == (
        "20260228080000", _ts("UTC", 2026, 3, 31, 8))
    assert anchored_month(_ts("UTC", 2028, 2, 29, 9), utc, f"0,0,{anchor}")[0] == "20280229080000"


def test_a_cycle_change_waits_for_the_end_of_the_period() -> None:
    utc = ZoneInfo("UTC")
    old, new = int(_ts("UTC", 2026, 1, 15)), int(_ts("UTC", 2026, 3, 20))
    kept = cycle_window(new, utc, f"0,0,{old}")  # moved to the 20th on 20 March, in the period from 15 March
    assert kept == (int(_ts("UTC", 2026, 3, 15)), int(_ts("UTC", 2026, 4, 15)))
    spec = f"{kept[0]},{kept[1]},{new}"
    before = anchored_month(_ts("UTC", 2026, 4, 14, 23), utc, spec)
    assert before == ("20260315000000", _ts("UTC", 2026, 4, 15))
    # From the next 15th, the new cycle: first cut short to start there, then whole periods.
    assert anchored_month(_ts("UTC", 2026, 4, 16), utc, spec) == ("20260415000000", _ts("UTC", 2026, 4, 20))
    assert anchored_month(_ts("UTC", 2026, 4, 21), utc, spec) == ("20260420000000", _ts("UTC", 2026, 5, 20))
    first = (int(_ts("UTC", 2026, 4, 15)), int(_ts("UTC", 2026, 4, 20)))
    assert cycle_window(_ts("UTC", 2026, 4, 16), utc, spec) == first


def test_calendar_months_take_over_at_the_end_of_the_cycle_window() -> None:
    utc = ZoneInfo("UTC")
    spec = f"{int(_ts('UTC', 2026, 6, 15))},{int(_ts('UTC', 2026, 7, 15))},0"  # cancelled in June
    assert anchored_month(_ts("UTC", 2026, 7, 14), utc, spec) == ("20260615000000", _ts("UTC", 2026, 7, 15))
    kept = (int(_ts("UTC", 2026, 6, 15)), int(_ts("UTC", 2026, 7, 15)))
    assert cycle_window(_ts("UTC", 2026, 7, 14), utc, spec) == kept
    # The rest of July, then calendar months under their usual ids.
    assert anchored_month(_ts("UTC", 2026, 7, 20), utc, spec) == ("20260715000000", _ts("UTC", 2026, 8, 1))
    assert anchored_month(_ts("UTC", 2026, 8, 3), utc, spec) == ("202608", _ts("UTC", 2026, 9, 1))
    july = _ts("UTC", 2026, 7, 20)
    assert cycle_window(july, utc, spec) == (0, 0) == cycle_window(july, utc, "")


def test_the_clock_caches_per_spec_and_learns_per_user() -> None:
    utc = ZoneInfo("UTC")
    clock = WindowClock(utc, max_users=2)
    now = _ts("UTC", 2026, 5, 3)
    assert clock.at(now, "u").ids == windows_at(now, utc).ids  # unknown users: calendar
    assert clock.learn("u", f"0,0,{int(_ts('UTC', 2026, 1, 15))}") is True
    assert clock.learn("u", clock.anchor("u")) is False
    assert clock.at(now, "u").ids[2] == "20260415000000"
    assert clock.at(now, "u").ends[2] == _ts("UTC", 2026, 5, 15)
    assert clock.at(now, "other").ids[2] == "202605"
    clock.learn("v", "0,0,1")
    clock.learn("w", "0,0,2")  # bounded: the least recently used user is dropped
    assert clock.anchor("u") == "" and clock.anchor("w") == "0,0,2"
    assert clock.learn("w", "") is True and clock.anchor("w") == ""


@settings(max_examples=300, deadline=None)
@given(prev=st.integers(T0, T1), new=st.integers(0, T1), changed=st.integers(T0, T1 - 10**8),
       ahead=st.integers(0, 10**8), zone=st.sampled_from(ZONES))
def test_a_pending_change_keeps_the_old_period_then_tiles_the_new_cycle(prev, new, changed, ahead, zone):
    kept = cycle_window(changed, zone, f"0,0,{prev}")
    assert kept == tuple(int(b) for b in anchored_period(changed, prev, zone))
    spec, now, switch = f"{kept[0]},{kept[1]},{new}", changed + ahead, kept[1]
    wid, end = anchored_month(now, zone, spec)
    if now < switch:
        assert (wid, end) == anchored_month(now, zone, f"0,0,{prev}")  # the old cycle, spend and all
        assert cycle_window(now, zone, spec) == kept
    else:
        start, whole_end = anchored_period(now, new, zone)
        assert end == whole_end
        if start >= switch:
            assert wid == anchored_month(now, zone, f"0,0,{new}" if new else "")[0]
        else:  # the first period of the next months starts where the old one ended
            assert wid == datetime.fromtimestamp(switch, zone).strftime("%Y%m%d%H%M%S")
        assert (cycle_window(now, zone, spec) != (0, 0)) == bool(new)
    # Windows tile time: the next one starts at this one's end, under another id.
    assert anchored_month(end - 1, zone, spec)[0] == wid != anchored_month(end, zone, spec)[0]
