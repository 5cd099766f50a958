"""A device credential (and its signing key) in hostile hands: what the gateway bounds.

Junk cannot fill the disk (quarantine and security events are capped per device and in
total, a rejected message is kept as its first bytes, its length and hash); a status
flood is written at a bounded rate; a signed reading claiming more energy than the meter
can deliver is held for review; a back-dated reading is refused; and a long gap between
two readings becomes one interval, not one per quarter hour.
"""
import hashlib
import random
import struct

from gateway.ingest import intervals, store
from gateway.ingest.core import IngestCore, Message
from protocol import ocmf
from tests.gateway.fixtures import COMMUNITY, T0, Signer, gwdb_fixture, topic  # noqa: F401

NOW = T0 + 3600
ACCOUNT = "0x" + "ab" * 20


def make_core(conn, clock=None, **cfg):
    return IngestCore(conn, COMMUNITY, cfg, clock=clock or (lambda: NOW))


def feed(core, items, at=NOW):
    msgs = [Message(t, p.encode() if isinstance(p, str) else p, at) for t, p in items]
    return core.commit(msgs, core.verify_inline(core.prepare(msgs)))


def count(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


# ---- quarantine and security events ------------------------------------------------------

def test_junk_from_one_device_cannot_fill_the_disk(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb, quarantine_per_device=20, quarantine_total=30, events_per_device=25)

    def junk(i):
        return i.to_bytes(4, "big") + bytes([i % 251]) * (64 * 1024)

    for i in range(150):
        out = feed(core, [(topic("dev1"), junk(i))])
        assert out.rejected == {"oversize": 1}
    rows = store.quarantined(gwdb, "dev1", limit=1000)
    assert len(rows) == 20                                   # the newest, the oldest rotated out
    assert all(r["length"] == 4 + 64 * 1024 and r["truncated"] for r in rows)
    assert count(gwdb, "SELECT SUM(length(raw)) FROM quarantine") <= 20 * 1024
    assert rows[0]["sha256"] == hashlib.sha256(junk(149)).hexdigest()   # hash of the whole message
    # the same message again is counted on its row, not stored again
    feed(core, [(topic("dev1"), junk(149))])
    assert store.quarantined(gwdb, "dev1", limit=1)[0]["count"] == 2
    # security events: bounded, yet every rejection is counted
    ev = store.events(gwdb, "dev1", limit=1000)
    assert len(ev) <= 25
    assert sum(e["count"] for e in ev if e["kind"] == "oversize") == 150
    assert sum(e["count"] for e in ev if e["kind"] == "quarantine_rotated") == 130
    # the total over all devices (here: unknown ids on an open broker)
    for i in range(40):
        feed(core, [(topic(f"ghost{i}"), b"OCMF|" + bytes([65 + i % 26]) * 600)])
    assert count(gwdb, "SELECT COUNT(*) FROM quarantine") == 30


def test_signed_rejections_are_kept_whole_and_events_survive_a_flood(gwdb):
    """A rejected reading that carries the device's valid signature is its own signed
    statement: kept whole (re-verifiable). Operator events are never rotated out."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb, quarantine_per_device=5, events_per_device=8)
    feed(core, [(topic("dev1"), s.record(1, 5000, 0, T0))])
    store.revoke_device(gwdb, "dev1", "stolen")
    core.reload()
    for i in range(50):
        feed(core, [(topic("dev1"), s.record(2 + i, 5000 + i, 0, T0 + 60 * i))])
    assert len(store.quarantined(gwdb, "dev1", limit=100)) == 5
    ev = store.events(gwdb, "dev1", limit=100)
    assert len(ev) <= 8
    assert [e["kind"] for e in ev if e["kind"] == "device_revoked"] == ["device_revoked"]
    assert sum(e["count"] for e in ev if e["kind"] == "revoked_device") == 50
    store.init(gwdb)   # a second init (the CLI's) changes nothing
    s2 = Signer("dev2")
    s2.register(gwdb)
    core.reload()
    feed(core, [(topic("dev2"), s2.record(1, 100, 0, T0)),
                (topic("dev2"), s2.record(2, 100 + 10**9, 0, T0 + 60))])       # held, below
    (q,) = store.quarantined(gwdb, "dev2")
    assert q["reason"] == "implausible_energy" and not q["truncated"] and q["length"] == len(q["raw"])
    assert ocmf.verify(q["raw"], s2.pub).import_wh == 100 + 10**9


def test_status_flood_is_written_at_a_bounded_rate_and_the_latest_kept(gwdb):
    s = Signer()
    s.register(gwdb)
    clock = [NOW]
    core = make_core(gwdb, clock=lambda: clock[0], status_interval_s=10, status_burst=3)
    gwdb.execute("CREATE TABLE status_writes (n INTEGER)")
    gwdb.execute("CREATE TRIGGER count_status AFTER UPDATE OF status ON devices "
                 "BEGIN INSERT INTO status_writes VALUES (1); END")
    for i in range(500):
        pub = "04" + ("%02x" % (i % 256)) * 64             # a different key each time, too
        body = b'{"state":"online","n":%d,"pubkey":"%s"}' % (i, pub.encode())
        assert core.status(topic("dev1", "status"), body) == "dev1"
    assert count(gwdb, "SELECT COUNT(*) FROM status_writes") <= 3
    assert len([e for e in store.events(gwdb, "dev1") if e["kind"] == "status_pubkey_mismatch"]) <= 3
    # the latest status is not lost: written once the device may write again
    clock[0] += 10
    core.flush_status()
    assert store.get_device(gwdb, "dev1")["status"]["n"] == 499
    assert count(gwdb, "SELECT COUNT(*) FROM status_writes") <= 4
    core.flush_status()
    assert count(gwdb, "SELECT COUNT(*) FROM status_writes") <= 4
    # a device reporting at an ordinary pace is written every time
    for _ in range(5):
        clock[0] += 30
        core.status(topic("dev1", "status"), b'{"state":"online","beat":%d}' % clock[0])
        assert store.get_device(gwdb, "dev1")["status"]["beat"] == clock[0]


# ---- energy plausibility -----------------------------------------------------------------

def _acme(s, seq, imp, exp, t, model="ACME-1"):
    """A record of a meter model the gateway has no rating for."""
    return s.sign(ocmf.build_payload(seq, imp, exp, t, gi="EGS-TEST", gs=s.id, gv="0.1.0", mv="Acme",
                                     mm=model, ms=s.serial))


def test_energy_beyond_the_meters_power_is_held_for_review(gwdb):
    s = Signer()
    s.register(gwdb, account=ACCOUNT)
    core = make_core(gwdb)
    assert feed(core, [(topic("dev1"), s.record(1, 1000, 0, T0))]).accepted == 1
    huge = s.record(2, 1000, 10**18, T0 + 60)                # 10^18 Wh in a minute
    out = feed(core, [(topic("dev1"), huge)])
    assert out.accepted == 0 and out.rejected == {"implausible_energy": 1}
    (q,) = store.quarantined(gwdb, "dev1")
    assert q["reason"] == "implausible_energy" and q["raw"] == huge and q["seq"] == 2
    assert "SDM630" in q["detail"] and "69000 W" in q["detail"]
    assert [e["kind"] for e in store.events(gwdb, "dev1")] == ["implausible_energy"]
    assert store.count_readings(gwdb, "dev1") == 1
    # what follows is measured against the last reading that counted: the device cannot
    # walk its registers up through held readings
    out = feed(core, [(topic("dev1"), s.record(3, 1000, 10**18 + 50, T0 + 120))])
    assert out.rejected == {"implausible_energy": 1}
    assert feed(core, [(topic("dev1"), s.record(4, 1200, 300, T0 + 1800))]).accepted == 1
    intervals.refresh(gwdb, now=NOW)
    rows = intervals.list_intervals(gwdb, "dev1")
    assert sum(r["export_wh"] for r in rows) <= 300 and sum(r["import_wh"] for r in rows) <= 200


def test_unknown_model_uses_the_configured_default_and_overrides_win(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb, max_power_w=5000)
    feed(core, [(topic("dev1"), _acme(s, 1, 0, 0, T0))])
    assert feed(core, [(topic("dev1"), _acme(s, 2, 60, 0, T0 + 60))]).accepted == 1        # 3.6 kW
    out = feed(core, [(topic("dev1"), _acme(s, 3, 1060, 0, T0 + 120))])                   # 60 kW
    assert out.rejected == {"implausible_energy": 1}
    assert "5000 W" in store.quarantined(gwdb, "dev1")[0]["detail"]
    core = make_core(gwdb, max_power_w=5000, device_max_power_w={"dev1": 100000})
    assert feed(core, [(topic("dev1"), _acme(s, 3, 1060, 0, T0 + 120))]).accepted == 1
    core = make_core(gwdb, max_power_w=5000, model_max_power_w={"acme-1": 100000})
    assert feed(core, [(topic("dev1"), _acme(s, 4, 2060, 0, T0 + 180))]).accepted == 1
    core = make_core(gwdb, energy_limit=False)
    assert feed(core, [(topic("dev1"), _acme(s, 5, 10**15, 0, T0 + 240))]).accepted == 1


def _f32_wh(wh):
    """A register as an Eastron meter reports it: kWh in IEEE single precision."""
    (kwh,) = struct.unpack(">f", struct.pack(">f", wh / 1000))
    return round(kwh * 1000)


def test_fast_readings_at_full_power_are_not_held(gwdb):
    """Several readings a second, whole-second timestamps taken up to a second before the
    registers are read, float32 registers near 100 MWh (7.8 Wh steps), at 95 % of an
    SDM630's rating: nothing is held."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb, clock=lambda: T0 + 86400)
    rnd = random.Random(7)
    power = 65_500
    tau, t_prev, e0 = float(T0), T0, 98_765_432
    recs = []
    for seq in range(1, 400):
        tau += rnd.choice((0.2, 0.5, 1.0, 3.0, 7.0, 20.0, 65.0))
        t = max(t_prev, int(tau - rnd.random()))
        e = _f32_wh(e0 + power * (tau - T0) / 3600)
        recs.append((topic("dev1"), s.record(seq, e, 12_345, t)))
        t_prev = t
    out = feed(core, recs)
    assert out.rejected == {} and out.accepted == len(recs)


def test_many_small_steps_cannot_add_up_to_more_than_the_rating(gwdb):
    """One reading a second, each step within a lenient bound for one second, together
    three times the rating: held once a minute's worth adds up."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    recs = [(topic("dev1"), s.record(i, 0, 55 * i, T0 + i)) for i in range(1, 200)]   # 198 kW
    out = feed(core, recs)
    assert out.rejected.get("implausible_energy", 0) > 0


# ---- reading time ------------------------------------------------------------------------

def test_backdated_readings_are_refused(gwdb):
    s = Signer()
    s.register(gwdb)
    reg = store.get_device(gwdb, "dev1")["created_at"]
    core = make_core(gwdb, clock=lambda: reg + 600)
    out = feed(core, [(topic("dev1"), s.record(1, 10, 0, 1592000000))], at=reg + 600)   # June 2020
    assert out.rejected == {"too_old": 1}
    out = feed(core, [(topic("dev1"), s.record(1, 10, 0, int(reg) - 86400))], at=reg + 600)
    assert out.rejected == {"before_registration": 1}
    out = feed(core, [(topic("dev1"), s.record(1, 10, 0, int(reg) - 600))], at=reg + 600)  # clock skew
    assert out.accepted == 1
    assert sorted(r["reason"] for r in store.quarantined(gwdb)) == ["before_registration", "too_old"]
    # unsynchronised readings carry no usable time: kept, flagged, never in intervals
    out = feed(core, [(topic("dev1"), s.record(2, 20, 0, 1592000000, status="U"))], at=reg + 600)
    assert out.accepted == 1


def test_a_long_gap_is_one_interval_not_one_per_quarter_hour(gwdb):
    s = Signer()
    s.register(gwdb)
    far = T0 + 86400
    core = make_core(gwdb, clock=lambda: far, max_future_s=10**9, max_age_s=10**9,
                     registration_skew_s=10**9)
    start = T0 - 20 * 86400
    rows = [(1, start, 0, 0), (2, start + 60, 0, 10), (3, T0 + 100, 0, 5_000_000),
            (4, T0 + 1000, 0, 5_000_100)]
    out = feed(core, [(topic("dev1"), s.record(q, i, e, t)) for q, t, i, e in rows], at=far)
    assert out.accepted == 4
    intervals.refresh(gwdb, now=far)
    ivs = intervals.list_intervals(gwdb, "dev1", limit=10**6)
    assert len(ivs) <= 3
    gap = next(r for r in ivs if r["start"] == T0)
    assert gap["estimated"] and gap["export_wh"] >= 5_000_000 - 10
    # energy conserved: the intervals add up to the register difference they cover
    last_end = max(r["end"] for r in ivs)
    r_end = 5_000_000 + 100 * (last_end - (T0 + 100)) // 900
    assert sum(r["export_wh"] for r in ivs) == r_end - 0


def test_every_meter_model_of_the_firmware_has_a_rating():
    from firmware.meters import MODELS
    from gateway.ingest.plausibility import RATINGS_W

    assert {m["model"] for m in MODELS.values()} <= set(RATINGS_W)
    assert RATINGS_W["SDM630"] == 100 * 3 * 230


def test_a_store_of_schema_version_1_gets_the_new_columns(tmp_path):
    from gateway import db

    conn = db.connect(tmp_path / "old.sqlite")
    old = [sql.replace(",\n        length INTEGER", "")
              .replace(",\n        count INTEGER NOT NULL DEFAULT 1,\n        last_at REAL", "")
           for sql in store.SCHEMA if "CREATE TABLE" in sql]
    for sql in old:
        conn.execute(sql)
    conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_versions VALUES ('gateway', 1)")
    conn.execute("INSERT INTO quarantine(device_id, topic, seq, reason, detail, raw, sha256, first_at, last_at) "
                 "VALUES('dev1', 't', NULL, 'malformed', 'x', X'4f434d46', 'abc', 1, 1)")
    conn.execute("INSERT INTO security_events(at, device_id, kind, detail) VALUES(1, 'dev1', 'malformed', 'x')")
    assert "length" not in {r[1] for r in conn.execute("PRAGMA table_info(quarantine)")}
    store.init(conn)
    (q,) = store.quarantined(conn)
    assert (q["raw"], q["length"], q["truncated"]) == ("OCMF", 4, False)
    (e,) = store.events(conn)
    assert e["count"] == 1
    store.add_event(conn, "dev1", "malformed", "y", coalesce=True)
    assert store.events(conn)[0]["count"] == 2
    conn.close()


def test_quarter_hours_that_fall_into_a_long_gap_later_hold_nothing(gwdb):
    """Rows of quarter hours that were spread over a gap and later lie inside a long one
    (intervals.long_gap_s lowered, then a reading fills part of the gap) drop to 0, so the
    total stays the register difference."""
    s = Signer()
    s.register(gwdb)
    far = T0 + 86400
    core = make_core(gwdb, clock=lambda: far)
    feed(core, [(topic("dev1"), s.record(1, 0, 0, T0)), (topic("dev1"), s.record(3, 5000, 0, T0 + 5 * 3600))],
         at=far)
    intervals.refresh(gwdb, now=far)
    assert len(intervals.list_intervals(gwdb, "dev1", limit=100)) == 20       # 5 hours spread
    assert feed(core, [(topic("dev1"), s.record(2, 4000, 0, T0 + 4 * 3600))], at=far).accepted == 1
    intervals.refresh(gwdb, now=far, long_gap=3600)
    ivs = intervals.list_intervals(gwdb, "dev1", limit=100)
    assert sum(r["import_wh"] for r in ivs) == 5000
    assert [r["start"] - T0 for r in ivs if r["import_wh"]] == [5 * 3600 - 900 * k for k in range(1, 5)] + [
        4 * 3600 - 900]
