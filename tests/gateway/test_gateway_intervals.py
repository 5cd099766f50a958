"""15-minute intervals from cumulative registers: interpolation, estimates, meter
replacement, late readings and adjustments after settlement."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import intervals, store
from gateway.ingest.core import IngestCore, Message
from tests.gateway.fixtures import COMMUNITY, T0, Signer, gwdb_fixture, topic  # noqa: F401

L = intervals.LENGTH_S
FAR = T0 + 10 * 86400


def ingest(conn, signer, rows, now=FAR):
    """rows: (seq, t, import_wh, export_wh[, serial[, status]])"""
    core = IngestCore(conn, COMMUNITY, {"max_future_s": 10**9}, clock=lambda: now)
    msgs = []
    for r in rows:
        seq, t, imp, exp = r[:4]
        serial = r[4] if len(r) > 4 else None
        status = r[5] if len(r) > 5 else "S"
        msgs.append(Message(topic(signer.id), signer.record(seq, imp, exp, t, status, serial).encode(), now))
    out = core.commit(msgs, core.verify_inline(core.prepare(msgs)))
    assert sum(out.rejected.values()) == 0, out.rejected
    intervals.refresh(conn, now=now)
    return out


def table(conn, device="dev1"):
    return {r["start"] - T0: (r["metered_import_wh"], r["metered_export_wh"], r["estimated"])
            for r in intervals.list_intervals(conn, device)}


def test_linear_interpolation_integer_and_exact_at_readings(gwdb):
    s = Signer()
    s.register(gwdb)
    ingest(gwdb, s, [(1, T0 - 30, 1000, 0), (2, T0 + 450, 1480, 7), (3, T0 + 930, 1960, 7),
                     (4, T0 + 1800, 2500, 20)])
    t = table(gwdb)
    # R(T0) = 1000 + 480*30//480 = 1030; R(T0+900) = 1480 + 480*450//480 = 1930
    # export: E(T0) = 0 + 7*30//480 = 0; E(T0+900) = 7
    assert t[0] == (900, 7, False)
    # R(T0+1800) = 2500 exactly (a reading on the boundary)
    assert t[900] == (2500 - 1930, 13, False)
    first = intervals.list_intervals(gwdb)[-1]
    assert first["start"] == T0 - 900 and first["estimated"] is True
    assert first["metered_import_wh"] == 1030 - 1000


def test_far_apart_readings_are_estimated_and_energy_is_conserved(gwdb):
    s = Signer()
    s.register(gwdb)
    ingest(gwdb, s, [(1, T0, 0, 0), (2, T0 + 7 * L + 13, 1000, 333)])
    t = table(gwdb)
    assert sorted(t) == [i * L for i in range(7)]
    assert all(est for _, _, est in t.values())
    # exact telescoping up to the last complete boundary
    r_end = 1000 * (7 * L) // (7 * L + 13)
    assert sum(v[0] for v in t.values()) == r_end
    assert all(v[0] in (r_end // 7, r_end // 7 + 1) for v in t.values())


def test_close_readings_are_not_estimated(gwdb):
    s = Signer()
    s.register(gwdb)
    ingest(gwdb, s, [(i + 1, T0 + 60 * i, 10 * i, 0) for i in range(31)])
    t = table(gwdb)
    assert t[0] == (150, 0, False) and t[900] == (150, 0, False)


def test_unsynchronised_readings_do_not_count_for_intervals(gwdb):
    s = Signer()
    s.register(gwdb)
    # if the U reading counted, R(T0+900) would be 1000 + 800*800//1700 = 1376
    ingest(gwdb, s, [(1, T0, 0, 0), (2, T0 + 100, 1000, 0, None, "U"), (3, T0 + 1800, 1800, 0),
                     (4, T0 + 1900, 1900, 0, None, "U")])
    assert table(gwdb)[0][0] == 900
    assert table(gwdb)[900][0] == 900


def test_meter_replacement_starts_a_new_baseline(gwdb):
    s = Signer(serial="OLD")
    s.register(gwdb)
    ingest(gwdb, s, [(1, T0, 50000, 100), (2, T0 + 300, 50100, 100)])
    store.replace_meter(gwdb, "dev1", "NEW")
    ingest(gwdb, s, [(3, T0 + 600, 5, 0, "NEW"), (4, T0 + 900, 25, 2, "NEW"), (5, T0 + 1800, 125, 2, "NEW")])
    t = table(gwdb)
    # old meter T0..T0+300: 100 Wh; new meter T0+600..T0+900: 20 Wh; the 5 Wh the new meter
    # already showed and the unmetered swap are not invented
    assert t[0] == (120, 2, True)
    assert t[900] == (100, 0, False)


def test_late_reading_changes_only_unsettled_intervals_and_settled_get_adjustments(gwdb):
    s = Signer()
    s.register(gwdb, account="0x" + "ab" * 20)
    # seq 2 (inside the first interval) arrives late
    ingest(gwdb, s, [(1, T0, 0, 0), (3, T0 + 900, 900, 0), (4, T0 + 1800, 1800, 0), (5, T0 + 2700, 2700, 0)])
    closed = intervals.closed_intervals(gwdb, now=T0 + 2700 + 120, grace_s=120)
    assert [(r["start"] - T0, r["import_wh"]) for r in closed] == [(0, 900), (900, 900), (1800, 900)]
    assert closed[0]["account"] == "0x" + "ab" * 20
    intervals.mark_settled(gwdb, [closed[0]["id"]], "0x" + "11" * 32)
    with pytest.raises(intervals.IntervalError):
        intervals.mark_settled(gwdb, [closed[0]["id"]], "0x" + "22" * 32)
    # a gap-filled reading changes nothing inside [T0, T0+900]: same boundary values
    ingest(gwdb, s, [(2, T0 + 450, 450, 0)])
    assert intervals.pending_adjustments(gwdb) == []
    # now a late reading that moves a boundary: seq 6 and 8 are far apart, 7 arrives late
    ingest(gwdb, s, [(6, T0 + 2700 + 100, 2800, 0), (8, T0 + 5400 + 100, 5500, 0)])
    before = {r["start"]: r for r in intervals.list_intervals(gwdb)}
    settle = [r for r in intervals.closed_intervals(gwdb, now=T0 + 4500 + 120, grace_s=120)
              if r["start"] == T0 + 2700]
    intervals.mark_settled(gwdb, [settle[0]["id"]], "0x" + "33" * 32)
    frozen = dict(before[T0 + 2700])
    # reading 7 says most of the energy came later than the interpolation assumed
    ingest(gwdb, s, [(7, T0 + 3500, 2810, 0)])
    after = {r["start"]: r for r in intervals.list_intervals(gwdb)}
    assert after[T0 + 2700]["metered_import_wh"] == frozen["metered_import_wh"]  # never edited
    assert after[T0 + 2700]["state"] == "settled"
    adj = after[T0 + 3600]
    assert adj["adjust_import_wh"] != 0 and adj["state"] == "open"
    # conservation: settled + adjustments + open == register difference up to the last boundary
    total = sum(r["import_wh"] for r in after.values())
    last_boundary = max(after) + L
    assert total == _register_at(last_boundary, [(T0, 0), (T0 + 900, 900), (T0 + 1800, 1800),
                                                 (T0 + 2700, 2700), (T0 + 2800, 2800),
                                                 (T0 + 3500, 2810), (T0 + 5500, 5500)])


def _register_at(b, pts):
    for (t0, r0), (t1, r1) in itertools.pairwise(pts):
        if t0 <= b <= t1:
            return r0 + (r1 - r0) * (b - t0) // (t1 - t0)
    raise AssertionError


def test_adjustment_waits_for_a_next_interval(gwdb):
    s = Signer()
    s.register(gwdb)
    ingest(gwdb, s, [(1, T0, 0, 0), (3, T0 + 1000, 1000, 0)])
    rows = intervals.closed_intervals(gwdb, now=FAR, grace_s=0)
    assert [r["import_wh"] for r in rows] == [900]
    intervals.mark_settled(gwdb, [rows[0]["id"]], "0x" + "44" * 32)
    ingest(gwdb, s, [(2, T0 + 100, 500, 0)])       # late: more energy early on
    pending = intervals.pending_adjustments(gwdb)
    # R(T0+900) is now 500 + 500*800//900 = 944: 44 Wh more than settled, no interval to carry it yet
    assert [(p["import_wh"], p["target_start"]) for p in pending] == [(44, None)]
    ingest(gwdb, s, [(4, T0 + 1800, 1800, 0)])
    assert intervals.pending_adjustments(gwdb) == []
    nxt = next(r for r in intervals.list_intervals(gwdb) if r["start"] == T0 + 900)
    assert nxt["adjust_import_wh"] == pending[0]["import_wh"]
    assert nxt["import_wh"] == nxt["metered_import_wh"] + nxt["adjust_import_wh"]
    settled_total = 900 + nxt["import_wh"]
    assert settled_total == 1800


def test_closed_intervals_respects_grace(gwdb):
    s = Signer()
    s.register(gwdb)
    ingest(gwdb, s, [(1, T0, 0, 0), (2, T0 + 900, 10, 0)])
    assert intervals.closed_intervals(gwdb, now=T0 + 900 + 119, grace_s=120) == []
    assert len(intervals.closed_intervals(gwdb, now=T0 + 900 + 120, grace_s=120)) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 5000), st.integers(0, 50)),
                min_size=2, max_size=30))
def test_compute_conserves_energy(steps):
    pts, t, imp, exp = [], T0 + 17, 1000, 0
    for i, (dt, di, de) in enumerate(steps):
        pts.append((i, t, imp, exp, 0))
        t, imp, exp = t + dt, imp + di, exp + de
    usable = intervals.usable(pts)
    rows = intervals.compute(usable, 900)
    if not rows:
        return
    end = rows[-1][0] + L
    assert sum(r[1] for r in rows) == _register_at(end, [(p[0], p[1]) for p in usable]) - usable[0][1]
    assert all(r[1] >= 0 and r[2] >= 0 for r in rows)
