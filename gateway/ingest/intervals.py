"""15-minute intervals per device, computed from cumulative registers.

The energy of interval [s, e) is R(e) − R(s), where R is a device's cumulative register
(import or export) at a boundary, linearly interpolated in integer arithmetic between
readings (`compute`): exact at reading times and never decreasing, so the intervals of a
stretch of readings add up to exactly the register difference over it: no Wh is created
or lost by rounding. Gaps longer than `long_gap_s` are not interpolated (their energy
lands in one interval), each meter epoch is its own curve, and readings with an
unsynchronised clock are not used (docs/gateway.md, "Intervals").

A settled interval is frozen: when late readings change what it should have been, the
difference is recorded as an adjustment carried into the device's next unsettled interval.
The ledger reads `closed_intervals` and calls `mark_settled` in ONE transaction with its
decision.
"""
from bisect import bisect_right

from gateway import clock
from gateway.db import transaction

LENGTH_S = 900
DEFAULT_ESTIMATE_GAP_S = 900
DEFAULT_LONG_GAP_S = 6 * 3600


class IntervalError(ValueError):
    pass


def interval_start(t, length=LENGTH_S):
    return t - t % length


# ---- pure computation --------------------------------------------------------

def usable(readings):
    """Readings in sequence order whose time moves forward; (t, imp, exp, epoch) tuples.

    `readings` are (seq, t, import_wh, export_wh, epoch) in any order. A reading whose
    time is not after the previous one (a clock stepped back) is left out; at equal
    times the later sequence wins.
    """
    out = []
    for _seq, t, imp, exp, epoch in sorted(readings):
        if out and t < out[-1][0]:
            continue
        if out and t == out[-1][0]:
            out[-1] = (t, imp, exp, epoch)
            continue
        out.append((t, imp, exp, epoch))
    return out


def _segments(points):
    """Split points into runs of the same meter epoch."""
    segs = []
    for p in points:
        if segs and segs[-1][-1][3] == p[3]:
            segs[-1].append(p)
        else:
            segs.append([p])
    return segs


def _value(seg, times, b, gap, long_gap=DEFAULT_LONG_GAP_S):
    """(import, export, estimated) of a segment's registers at time b (first ≤ b ≤ last)."""
    i = bisect_right(times, b) - 1
    t0, i0, e0, _ = seg[i]
    if t0 == b or i + 1 == len(seg):
        return i0, e0, False
    t1, i1, e1, _ = seg[i + 1]
    span = t1 - t0
    if span > long_gap:
        return i0, e0, True     # flat until the gap's end: its energy lands in one interval
    imp = i0 + (i1 - i0) * (b - t0) // span
    exp = e0 + (e1 - e0) * (b - t0) // span
    return imp, exp, span > gap


def compute(points, gap=DEFAULT_ESTIMATE_GAP_S, first_start=None, length=LENGTH_S,
            long_gap=DEFAULT_LONG_GAP_S):
    """Intervals [(start, import_wh, export_wh, estimated)] covered by `points`.

    `points` come from `usable`. Intervals start at `first_start` (default: the
    interval of the first point) and end with the last interval whose end is not
    after the last point. Intervals with no reading inside a gap longer than
    `long_gap` are left out (their energy is 0: it lands where the gap ends).

    A register at boundary b between readings (t0, r0) and (t1, r1) is
    r0 + (r1 − r0) · (b − t0) // (t1 − t0); across a gap longer than `long_gap` it is
    taken as flat until the later reading, so the whole gap's energy lands in ONE
    interval, the one that reading ends or falls in. An interval is *estimated* when a
    boundary had to be interpolated across readings more than `gap` apart, or when the
    readings do not cover the whole interval (the device's first interval, a meter
    replacement inside it). Each meter epoch is its own curve: an interval takes from
    each only the part its readings cover, so the new meter starts from its own first
    reading and the energy between the old meter's last and the new meter's first
    reading, which nobody measured, is not invented.
    """
    if not points:
        return []
    segs = [(seg, [p[0] for p in seg]) for seg in _segments(points)]
    times_all = [p[0] for p in points]
    last_t = points[-1][0]
    s = interval_start(points[0][0], length) if first_start is None else first_start
    out = []
    while s + length <= last_t:
        e = s + length
        k = bisect_right(times_all, s) - 1
        if 0 <= k < len(times_all) - 1 and times_all[k + 1] > e and times_all[k + 1] - times_all[k] > long_gap:
            s = max(e, interval_start(times_all[k + 1] - 1, length))
            continue
        imp = exp = 0
        covered = interpolated = False
        for seg, times in segs:
            lo, hi = max(s, times[0]), min(e, times[-1])
            if lo > hi:
                continue
            covered = covered or (times[0] <= s and times[-1] >= e)
            a_imp, a_exp, a_est = _value(seg, times, lo, gap, long_gap)
            b_imp, b_exp, b_est = _value(seg, times, hi, gap, long_gap)
            imp += b_imp - a_imp
            exp += b_exp - a_exp
            interpolated = interpolated or a_est or b_est
        estimated = interpolated or not covered
        out.append((s, imp, exp, estimated))
        s = e
    return out


# ---- store side --------------------------------------------------------------

def mark_dirty(conn, device_id, since):
    """Ingest calls this in its transaction: readings at or after `since` changed."""
    conn.execute(
        "UPDATE devices SET dirty_since = MIN(COALESCE(dirty_since, ?), ?) WHERE id=?",
        (int(since), int(since), device_id),
    )


def _points(conn, device_id, since):
    """Usable points needed to recompute intervals from the one bracketing `since`."""
    row = conn.execute(
        "SELECT MAX(time_epoch) FROM readings WHERE device_id=? AND time_trusted=1 AND time_epoch < ?",
        (device_id, since),
    ).fetchone()
    before = row[0]
    if before is None:
        lower, first_start = None, None
    else:
        first_start = interval_start(before)
        row = conn.execute(
            "SELECT MAX(time_epoch) FROM readings WHERE device_id=? AND time_trusted=1 "
            "AND time_epoch <= ?", (device_id, first_start)).fetchone()
        lower = row[0]
    sql = ("SELECT seq, time_epoch, import_wh, export_wh, meter_epoch FROM readings "
           "WHERE device_id=? AND time_trusted=1")
    args = [device_id]
    if lower is not None:
        sql += " AND time_epoch >= ?"
        args.append(lower)
    pts = usable([tuple(r) for r in conn.execute(sql, args)])
    if first_start is not None and pts and pts[0][0] > first_start:
        first_start = None  # nothing before: start from the first reading's interval
    return pts, first_start


def _accounted(conn, device_id, start):
    row = conn.execute(
        "SELECT COALESCE(SUM(import_wh), 0), COALESCE(SUM(export_wh), 0) FROM interval_adjustments "
        "WHERE device_id=? AND source_start=?", (device_id, start)).fetchone()
    return row[0], row[1]


def recompute_device(conn, device_id, since, gap=DEFAULT_ESTIMATE_GAP_S, now=None,
                     long_gap=DEFAULT_LONG_GAP_S):
    """Bring one device's intervals up to date with its readings from `since` on.

    An interval row exists once some reading lies at or after its end. Until it is settled
    it is recomputed here; a settled one is frozen, and the difference becomes an adjustment
    targeting the device's next unsettled interval.
    """
    now = clock.now() if now is None else now
    points, first_start = _points(conn, device_id, since)
    rows = compute(points, gap, first_start, long_gap=long_gap)
    if rows:
        # rows of quarter hours now inside a long gap (long_gap_s lowered since, or a reading
        # left out by `usable`) hold 0
        lo = interval_start(points[0][0]) if first_start is None else first_start
        have = {r[0] for r in rows}
        rows += [(r[0], 0, 0, True) for r in conn.execute(
            "SELECT start FROM intervals WHERE device_id=? AND start BETWEEN ? AND ? ORDER BY start",
            (device_id, lo, rows[-1][0])) if r[0] not in have]
    for start, imp, exp, est in rows:
        row = conn.execute(
            "SELECT id, import_wh, export_wh, estimated, state FROM intervals WHERE device_id=? AND start=?",
            (device_id, start)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO intervals(device_id, start, end, import_wh, export_wh, estimated, computed_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?)",
                (device_id, start, start + LENGTH_S, imp, exp, int(est), now))
        elif row["state"] == "open":
            if (row["import_wh"], row["export_wh"], row["estimated"]) != (imp, exp, int(est)):
                conn.execute(
                    "UPDATE intervals SET import_wh=?, export_wh=?, estimated=?, computed_at=? WHERE id=?",
                    (imp, exp, int(est), now, row["id"]))
        else:
            adj_imp, adj_exp = _accounted(conn, device_id, start)
            d_imp = imp - (row["import_wh"] + adj_imp)
            d_exp = exp - (row["export_wh"] + adj_exp)
            if d_imp or d_exp:
                conn.execute(
                    "INSERT INTO interval_adjustments(device_id, source_start, import_wh, export_wh, created_at) "
                    "VALUES(?, ?, ?, ?, ?)", (device_id, start, d_imp, d_exp, now))
    _attach_adjustments(conn, device_id)


def _attach_adjustments(conn, device_id):
    """Pending adjustments go to the first unsettled interval after their source."""
    pending = conn.execute(
        "SELECT id, source_start FROM interval_adjustments WHERE device_id=? AND target_start IS NULL",
        (device_id,)).fetchall()
    for adj_id, source in pending:
        row = conn.execute(
            "SELECT MIN(start) FROM intervals WHERE device_id=? AND state='open' AND start > ?",
            (device_id, source)).fetchone()
        if row[0] is not None:
            conn.execute("UPDATE interval_adjustments SET target_start=? WHERE id=?", (row[0], adj_id))


def _gap_setting(conn, key="intervals.estimate_gap_s", default=DEFAULT_ESTIMATE_GAP_S):
    row = conn.execute("SELECT value FROM gateway_state WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


def set_estimate_gap(conn, gap_s, long_gap_s=None):
    """The service records its configured gaps so every caller of `refresh` uses them."""
    from gateway.ingest.store import put_state
    with transaction(conn):
        put_state(conn, "intervals.estimate_gap_s", int(gap_s))
        if long_gap_s is not None:
            put_state(conn, "intervals.long_gap_s", int(long_gap_s))


def refresh(conn, gap=None, now=None, long_gap=None):
    """Recompute the intervals of every device with new readings. Returns their ids.

    Runs in the caller's transaction when there is one, else in its own.
    """
    if not conn.in_transaction:
        with transaction(conn):
            return refresh(conn, gap, now, long_gap)
    gap = _gap_setting(conn) if gap is None else gap
    if long_gap is None:
        long_gap = _gap_setting(conn, "intervals.long_gap_s", DEFAULT_LONG_GAP_S)
    dirty = conn.execute("SELECT id, dirty_since FROM devices WHERE dirty_since IS NOT NULL").fetchall()
    for device_id, since in dirty:
        recompute_device(conn, device_id, since, gap, now, long_gap)
        conn.execute("UPDATE devices SET dirty_since=NULL WHERE id=?", (device_id,))
    return [d[0] for d in dirty]


def _with_adjustments(conn, rows):
    out = []
    for r in rows:
        d = dict(r)
        a = conn.execute(
            "SELECT COALESCE(SUM(import_wh), 0), COALESCE(SUM(export_wh), 0) FROM interval_adjustments "
            "WHERE device_id=? AND target_start=?", (d["device_id"], d["start"])).fetchone()
        d["estimated"] = bool(d["estimated"])
        d["metered_import_wh"], d["metered_export_wh"] = d["import_wh"], d["export_wh"]
        d["adjust_import_wh"], d["adjust_export_wh"] = a[0], a[1]
        d["import_wh"] = d["metered_import_wh"] + a[0]
        d["export_wh"] = d["metered_export_wh"] + a[1]
        out.append(d)
    return out


_COLUMNS = ("i.id, i.device_id, d.account, i.start, i.end, i.import_wh, i.export_wh, i.estimated, "
            "i.state, i.settlement_id, i.settled_at")


def closed_intervals(conn, now=None, grace_s=120, limit=None, refresh_first=True):
    """Unsettled intervals whose end is at least `grace_s` in the past, oldest first.

    Each is a dict: id, device_id, account (or None), start, end, import_wh, export_wh
    (to settle), metered_import_wh, metered_export_wh, adjust_import_wh,
    adjust_export_wh, estimated, state, settlement_id, settled_at. import_wh/export_wh
    are the metered energy plus adjustments carried in (negative after a correction:
    burn instead of mint). The ledger, inside ONE transaction:

        rows = intervals.closed_intervals(conn, now, grace_s)
        ...decide, enqueue the settlement...
        intervals.mark_settled(conn, [r["id"] for r in rows], settlement_id)

    Devices with new readings are brought up to date first (`refresh`).
    """
    now = clock.now() if now is None else now
    if refresh_first:
        refresh(conn, now=now)
    sql = (f"SELECT {_COLUMNS} FROM intervals i JOIN devices d ON d.id = i.device_id "
           "WHERE i.state='open' AND i.end + ? <= ? ORDER BY i.start, i.device_id")
    args = [grace_s, now]
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return _with_adjustments(conn, conn.execute(sql, args).fetchall())


def mark_settled(conn, ids, settlement_id, now=None):
    """Freeze intervals as settled by `settlement_id` (call in the caller's transaction).

    Raises IntervalError, changing nothing, if any id is unknown or already settled.
    """
    ids = list(ids)
    if not ids:
        return 0
    now = clock.now() if now is None else now
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT id, state FROM intervals WHERE id IN ({marks})", ids).fetchall()
    found = {r[0]: r[1] for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise IntervalError(f"no such interval id(s): {missing}")
    settled = [i for i in ids if found[i] != "open"]
    if settled:
        raise IntervalError(f"interval id(s) already settled: {settled}")
    conn.execute(
        f"UPDATE intervals SET state='settled', settlement_id=?, settled_at=? WHERE id IN ({marks})",
        [settlement_id, now, *ids])
    return len(ids)


def list_intervals(conn, device_id=None, limit=200):
    """Newest first, with their adjustments, for the CLI."""
    sql = f"SELECT {_COLUMNS} FROM intervals i JOIN devices d ON d.id = i.device_id"
    args = []
    if device_id is not None:
        sql += " WHERE i.device_id=?"
        args.append(device_id)
    sql += " ORDER BY i.start DESC, i.device_id LIMIT ?"
    args.append(int(limit))
    return _with_adjustments(conn, conn.execute(sql, args).fetchall())


def in_progress(conn, device_id=None):
    """The quarter-hour each device's latest reading falls in, not yet complete, for the CLI.

    Its row is created (and can be settled) only once a reading at or after its end
    arrives; until then its energy so far is worked out here the way `compute` would,
    from the interval's start to the latest reading, and nothing is stored. Dicts shaped
    like `list_intervals` rows, with state "in progress" and no id.
    """
    sql = ("SELECT d.id, d.account, MAX(r.time_epoch) FROM devices d JOIN readings r ON r.device_id = d.id "
           "AND r.time_trusted=1")
    args = []
    if device_id is not None:
        sql += " WHERE d.id=?"
        args.append(device_id)
    out = []
    for dev, account, last_t in conn.execute(sql + " GROUP BY d.id ORDER BY d.id", args).fetchall():
        start = interval_start(last_t)
        gap = _gap_setting(conn)
        long_gap = _gap_setting(conn, "intervals.long_gap_s", DEFAULT_LONG_GAP_S)
        points, _ = _points(conn, dev, start)
        imp = exp = 0
        covered = interpolated = False
        for seg in _segments(points):
            times = [p[0] for p in seg]
            lo, hi = max(start, times[0]), min(last_t, times[-1])
            if lo > hi:
                continue
            covered = covered or times[0] <= start
            a_imp, a_exp, a_est = _value(seg, times, lo, gap, long_gap)
            b_imp, b_exp, b_est = _value(seg, times, hi, gap, long_gap)
            imp += b_imp - a_imp
            exp += b_exp - a_exp
            interpolated = interpolated or a_est or b_est
        out.append({"id": None, "device_id": dev, "account": account, "start": start,
                    "end": start + LENGTH_S, "import_wh": imp, "export_wh": exp,
                    "metered_import_wh": imp, "metered_export_wh": exp, "adjust_import_wh": 0,
                    "adjust_export_wh": 0, "estimated": interpolated or not covered,
                    "state": "in progress", "settlement_id": None, "settled_at": None,
                    "reading_until": last_t})
    return out


def pending_adjustments(conn, device_id=None):
    """Corrections of settled intervals not yet attached to an unsettled one."""
    sql = "SELECT * FROM interval_adjustments WHERE target_start IS NULL"
    args = []
    if device_id is not None:
        sql += " AND device_id=?"
        args.append(device_id)
    return [dict(r) for r in conn.execute(sql, args)]


def interval_readings(conn, device_id, start, end=None):
    """The raw OCMF records an interval rests on: those bracketing and inside [start, end]."""
    end = start + LENGTH_S if end is None else end
    lo = conn.execute(
        "SELECT MAX(time_epoch) FROM readings WHERE device_id=? AND time_trusted=1 AND time_epoch <= ?",
        (device_id, start)).fetchone()[0]
    hi = conn.execute(
        "SELECT MIN(time_epoch) FROM readings WHERE device_id=? AND time_trusted=1 AND time_epoch >= ?",
        (device_id, end)).fetchone()[0]
    lo = start if lo is None else lo
    hi = end if hi is None else hi
    return [dict(r) for r in conn.execute(
        "SELECT seq, time_epoch, import_wh, export_wh, raw FROM readings WHERE device_id=? "
        "AND time_trusted=1 AND time_epoch BETWEEN ? AND ? ORDER BY seq", (device_id, lo, hi))]
