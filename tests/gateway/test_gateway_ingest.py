"""The ingest core against a real SQLite store, with records signed by the tests.

(The same pipeline through real mosquitto is in test_gateway_service.py.)
"""
import os
import random
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest import store, verify
from gateway.ingest.core import IngestCore, Message
from protocol import ocmf
from tests.gateway.fixtures import COMMUNITY, T0, Signer, gwdb_fixture, topic  # noqa: F401

NOW = T0 + 3600


def make_core(conn, **cfg):
    return IngestCore(conn, COMMUNITY, cfg, clock=lambda: NOW)


def feed(core, items):
    """items: [(topic, payload)] -> Outcome, through prepare/verify/commit like the service."""
    msgs = [Message(t, p.encode() if isinstance(p, str) else p, NOW) for t, p in items]
    work = core.prepare(msgs)
    return core.commit(msgs, core.verify_inline(work))


def reasons(conn):
    return sorted(r["reason"] for r in store.quarantined(conn))


def test_valid_records_are_stored_verbatim_and_acked(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    recs = [s.record(i, 1000 + 10 * i, 5 * i, T0 + 60 * i) for i in range(1, 4)]
    out = feed(core, [(topic("dev1"), r) for r in recs])
    assert out.accepted == 3 and out.acks == {"dev1": 3} and not out.resend
    rows = sorted(store.readings(gwdb, "dev1"), key=lambda r: r["seq"])
    assert [r["raw"] for r in rows] == recs
    assert [(r["seq"], r["import_wh"], r["export_wh"], r["time_epoch"]) for r in rows] == [
        (1, 1010, 5, T0 + 60), (2, 1020, 10, T0 + 120), (3, 1030, 15, T0 + 180)]
    d = store.get_device(gwdb, "dev1")
    assert (d["last_seq"], d["acked_seq"]) == (3, 3)
    assert store.quarantined(gwdb) == []


def test_large_register_values_exact(gwdb):
    s = Signer()
    s.register(gwdb)
    out = feed(make_core(gwdb), [(topic("dev1"), s.record(1, 98765432, 12345678901, T0))])
    assert out.accepted == 1
    r = store.reading(gwdb, "dev1", 1)
    assert (r["import_wh"], r["export_wh"]) == (98765432, 12345678901)


def test_rejections_have_the_right_reason_and_store_nothing(gwdb):
    a, b = Signer("dev1", "SN-A"), Signer("dev2", "SN-B")
    a.register(gwdb)
    b.register(gwdb)
    stranger = Signer("ghost")
    core = make_core(gwdb)
    good = a.record(1, 1000, 0, T0)
    feed(core, [(topic("dev1"), good)])
    tampered = a.record(2, 1100, 0, T0 + 60).replace('"RV":1.100', '"RV":9.100')
    assert tampered != a.record(2, 1100, 0, T0 + 60)
    cases = [
        (topic("dev1"), tampered, "bad_signature"),
        (topic("dev1"), a.record(2, 1100, 0, T0 + 60, key=b.key), "bad_signature"),
        (topic("dev2"), a.record(1, 1100, 0, T0 + 60), "bad_signature"),   # a's record under b's id
        (topic("ghost"), stranger.record(1, 1, 0, T0), "unknown_device"),
        (topic("dev1"), a.record(2, 1100, 0, T0 + 60, serial="SN-OTHER"), "meter_serial_mismatch"),
        (topic("dev1"), a.record(2, 900, 0, T0 + 60), "register_decreased"),
        (topic("dev1"), a.record(1, 1000, 1, T0), "sequence_reused"),
        (topic("dev1"), a.record(2, 1100, 0, 1000), "implausible_time"),              # 1970
        (topic("dev1"), a.record(2, 1100, 0, NOW + 86400), "implausible_time"),       # future
        (topic("dev1"), "OCMF|{not json}|{}", "malformed"),
        (topic("dev1"), "hello", "malformed"),
        (topic("dev1"), os.urandom(300), "malformed"),
        (topic("dev1"), good.replace('"SA":"ECDSA-secp256r1-SHA256"', '"SA":"ECDSA-secp384r1-SHA256"'),
         "bad_algorithm"),
        ("egs/v1/othercomm/dev1/ocmf", good, "bad_topic"),
        (topic("dev1"), "x" * 20000, "oversize"),
    ]
    for t, payload, reason in cases:
        out = feed(core, [(t, payload)])
        assert out.accepted == 0 and out.rejected == {reason: 1}, (reason, out.rejected)
    assert store.count_readings(gwdb) == 1
    assert reasons(gwdb) == sorted(r for _, _, r in cases)
    kinds = sorted(e["kind"] for e in store.events(gwdb) if e["quarantine_id"])
    assert kinds == sorted(r for _, _, r in cases)
    # the same bad message again: counted, not stored twice
    feed(core, [(topic("dev1"), tampered)])
    q = [r for r in store.quarantined(gwdb) if r["raw"] == tampered]
    assert len(q) == 1 and q[0]["count"] == 2
    assert len(store.events(gwdb, limit=1000)) == len(cases) + 0


def test_revoked_device_is_rejected(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    feed(core, [(topic("dev1"), s.record(1, 10, 0, T0))])
    store.revoke_device(gwdb, "dev1", "stolen")
    out = feed(core, [(topic("dev1"), s.record(2, 20, 0, T0 + 60))])
    assert out.rejected == {"revoked_device": 1} and out.acks == {}
    assert store.count_readings(gwdb) == 1


def test_duplicate_is_acked_again_and_stored_once(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    r1, r2 = s.record(1, 10, 0, T0), s.record(2, 20, 0, T0 + 60)
    feed(core, [(topic("dev1"), r1), (topic("dev1"), r2)])
    out = feed(core, [(topic("dev1"), r1), (topic("dev1"), r2), (topic("dev1"), r2)])
    assert (out.accepted, out.duplicates, out.acks) == (0, 3, {"dev1": 2})
    assert store.count_readings(gwdb) == 2 and store.quarantined(gwdb) == []
    # the same payload signed again (ECDSA with a random nonce): still the same reading
    again = s.sign(s.payload(2, 20, 0, T0 + 60))
    assert again != r2
    out = feed(core, [(topic("dev1"), again)])
    assert (out.accepted, out.duplicates, out.rejected) == (0, 1, {})
    # duplicates inside one batch too
    r3 = s.record(3, 30, 0, T0 + 120)
    out = feed(core, [(topic("dev1"), r3), (topic("dev1"), r3)])
    assert (out.accepted, out.duplicates, out.acks) == (1, 1, {"dev1": 3})
    assert store.count_readings(gwdb) == 3


def test_replay_below_baseline_rejected(gwdb):
    s = Signer()
    s.register(gwdb, first_seq=5)
    core = make_core(gwdb)
    out = feed(core, [(topic("dev1"), s.record(4, 10, 0, T0))])
    assert out.rejected == {"replayed_sequence": 1}
    out = feed(core, [(topic("dev1"), s.record(5, 10, 0, T0))])
    assert out.acks == {"dev1": 5}


def test_gap_is_recorded_and_resend_requested_then_filled(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb, resend_cooldown_s=1000)
    recs = {i: s.record(i, 100 * i, 0, T0 + 60 * i) for i in range(1, 8)}
    out = feed(core, [(topic("dev1"), recs[i]) for i in (1, 2, 5, 6)])
    assert out.acks == {"dev1": 2} and out.resend == {"dev1": 3}
    gaps = store.gaps(gwdb, "dev1")
    assert [(g["from_seq"], g["to_seq"], g["filled_at"]) for g in gaps] == [(3, 4, None)]
    out = feed(core, [(topic("dev1"), recs[7])])
    assert out.acks == {"dev1": 2} and out.resend == {}      # same request, cooling down
    out = feed(core, [(topic("dev1"), recs[3])])
    assert out.acks == {"dev1": 3} and out.resend == {"dev1": 4}
    out = feed(core, [(topic("dev1"), recs[i]) for i in (4, 5, 6, 7)])   # the device's replay
    assert out.acks == {"dev1": 7} and out.resend == {} and out.duplicates == 3
    assert store.gaps(gwdb, "dev1", open_only=True) == []
    assert store.count_readings(gwdb, "dev1") == 7


def test_first_readings_missing_are_asked_for(gwdb):
    """A device's numbers start at 1: if the gateway first hears 3, it asks for 1 and 2
    (acknowledging 3 would make the device delete readings nobody stored)."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    out = feed(core, [(topic("dev1"), s.record(3, 30, 0, T0 + 180))])
    assert out.acks == {"dev1": 0} and out.resend == {"dev1": 1}
    out = feed(core, [(topic("dev1"), s.record(i, 10 * i, 0, T0 + 60 * i)) for i in (1, 2)])
    assert out.acks == {"dev1": 3} and out.resend == {}


def test_unfillable_gap_is_given_up_and_recorded_as_lost(gwdb):
    s = Signer()
    s.register(gwdb)
    clock = [NOW]
    core = IngestCore(gwdb, COMMUNITY, {"resend_cooldown_s": 10, "gap_give_up": 3}, clock=lambda: clock[0])
    feed(core, [(topic("dev1"), s.record(i, i, 0, T0 + i)) for i in (1, 2)])
    requests = []
    seq = 70                                   # the device's flash was wiped: it skipped 3..69
    for _ in range(4):
        out = feed(core, [(topic("dev1"), s.record(seq, seq, 0, T0 + seq))])
        requests.append(out.resend.get("dev1"))
        clock[0] += 11
        seq += 1
    assert requests == [3, 3, 3, None]
    assert out.acks == {"dev1": 73}
    lost = [g for g in store.gaps(gwdb, "dev1") if g["lost"]]
    assert [(g["from_seq"], g["to_seq"]) for g in lost] == [(3, 69)]
    assert [e["kind"] for e in store.events(gwdb)] == ["readings_lost"]
    # if one of them turns up after all, it is still a genuine reading: stored
    out = feed(core, [(topic("dev1"), s.record(5, 5, 0, T0 + 5))])
    assert out.accepted == 1 and out.acks == {"dev1": 73}
    out = feed(core, [(topic("dev1"), s.record(0, 0, 0, T0))])
    assert out.rejected == {"replayed_sequence": 1}


def test_gap_fill_checks_registers_against_both_neighbours(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    feed(core, [(topic("dev1"), s.record(1, 100, 0, T0)), (topic("dev1"), s.record(3, 300, 0, T0 + 120))])
    out = feed(core, [(topic("dev1"), s.record(2, 301, 0, T0 + 60))])
    assert out.rejected == {"register_decreased": 1}
    out = feed(core, [(topic("dev1"), s.record(2, 99, 0, T0 + 60))])
    assert out.rejected == {"register_decreased": 1}
    out = feed(core, [(topic("dev1"), s.record(2, 200, 0, T0 + 60))])
    assert out.accepted == 1 and out.acks == {"dev1": 3}


def test_meter_replacement_allows_a_new_baseline(gwdb):
    s = Signer(serial="OLD")
    s.register(gwdb)
    core = make_core(gwdb)
    feed(core, [(topic("dev1"), s.record(1, 50000, 10, T0))])
    out = feed(core, [(topic("dev1"), s.record(2, 5, 0, T0 + 60, serial="NEW"))])
    assert out.rejected == {"meter_serial_mismatch": 1}
    store.replace_meter(gwdb, "dev1", "NEW")
    out = feed(core, [(topic("dev1"), s.record(2, 5, 0, T0 + 60, serial="NEW"))])
    assert out.accepted == 1
    # the new meter's register may not fall either, and the old meter is gone
    out = feed(core, [(topic("dev1"), s.record(3, 4, 0, T0 + 120, serial="NEW"))])
    assert out.rejected == {"register_decreased": 1}
    out = feed(core, [(topic("dev1"), s.record(3, 50001, 10, T0 + 120, serial="OLD"))])
    assert out.rejected == {"meter_serial_mismatch": 1}
    kinds = [e["kind"] for e in store.events(gwdb)]
    assert "meter_replaced" in kinds and "meter_baseline" in kinds


def test_unsynchronised_time_is_kept_but_flagged(gwdb):
    s = Signer()
    s.register(gwdb)
    out = feed(make_core(gwdb), [(topic("dev1"), s.record(1, 10, 0, 5, status="U"))])
    assert out.accepted == 1
    r = store.reading(gwdb, "dev1", 1)
    assert (r["time_status"], r["time_trusted"]) == ("U", 0)


def test_ack_only_after_commit(gwdb):
    """A batch the store cannot write (here: read-only) acknowledges and stores nothing;
    one record the store refuses (a constraint) leaves the rest of the batch stored."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    records = [(topic("dev1"), s.record(i, i, 0, T0 + i)) for i in (1, 2, 3)]
    gwdb.execute("PRAGMA query_only = ON")
    out = feed(core, records)
    assert out.acks == {} and out.accepted == 0
    gwdb.execute("PRAGMA query_only = OFF")
    assert store.count_readings(gwdb) == 0 and store.quarantined(gwdb) == []
    gwdb.execute("CREATE TRIGGER refuse BEFORE INSERT ON readings WHEN NEW.seq = 3 "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    out = feed(core, records)
    assert out.acks == {"dev1": 2} and store.count_readings(gwdb) == 2
    assert reasons(gwdb) == ["internal_error"]
    gwdb.execute("DROP TRIGGER refuse")
    out = feed(core, records)
    assert out.acks == {"dev1": 3} and store.count_readings(gwdb) == 3


def test_registry_changes_from_another_connection_are_seen(gwdb, tmp_path):
    from gateway import db
    s = Signer()
    core = make_core(gwdb)
    other = db.connect(tmp_path / "gw.sqlite")
    s.register(other)
    out = feed(core, [(topic("dev1"), s.record(1, 10, 0, T0))])
    assert out.accepted == 1
    store.revoke_device(other, "dev1")
    out = feed(core, [(topic("dev1"), s.record(2, 20, 0, T0 + 60))])
    assert out.rejected == {"revoked_device": 1}


def test_status_messages_recorded(gwdb):
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    assert core.status(topic("dev1", "status"), b'{"state":"online","fw":"0.1.0","pubkey":"%s"}'
                       % s.pub.hex().encode()) == "dev1"
    assert store.get_device(gwdb, "dev1")["status"]["state"] == "online"
    core.status(topic("dev1", "status"), b"offline")
    assert store.get_device(gwdb, "dev1")["status"] == {"state": "offline"}
    core.status(topic("dev1", "status"), b'{"state":"online","pubkey":"04abcd"}')
    core.status(topic("dev1", "status"), b'{"state":"online","pubkey":"04abcd"}')   # retained, again
    assert [e["kind"] for e in store.events(gwdb)] == ["status_pubkey_mismatch"]
    assert core.status(topic("nobody", "status"), b"{}") is None
    assert core.status(topic("dev1", "status"), os.urandom(50)) == "dev1"
    # nesting deeper than the JSON decoder's recursion limit (the interpreter's default
    # of 1000 in the service; the test run raises it): kept as text, not an exception
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        assert core.status(topic("dev1", "status"), b"[" * 3000) == "dev1"
    finally:
        sys.setrecursionlimit(limit)
    assert store.get_device(gwdb, "dev1")["status"] == {"state": "[" * 3000}


def test_sequence_beyond_64_bits_is_rejected_and_the_batch_survives(gwdb):
    """PG has no digit limit in OCMF; SQLite integers do. Such a record (signed or not)
    is quarantined as malformed, and the good records of its batch are stored and acked."""
    s = Signer()
    s.register(gwdb)
    core = make_core(gwdb)
    huge = s.payload(2, 20, 0, T0 + 60).replace(b'"PG":"F2"', b'"PG":"F' + b"9" * 25 + b'"')
    out = feed(core, [
        (topic("dev1"), s.record(1, 10, 0, T0)),
        (topic("dev1"), s.sign(huge)),                                            # signed by the device
        (topic("dev1"), s.sign(huge, key=Signer().key)),                          # and not
        (topic("dev1"), s.sign(huge).replace("secp256r1", "secp384r1")),
        (topic("dev1"), s.record(2, 20, 0, T0 + 60)),
    ])
    assert out.accepted == 2 and out.acks == {"dev1": 2}
    assert sum(out.rejected.values()) == 3 and set(out.rejected) <= {"malformed", "bad_signature", "bad_algorithm"}
    assert [r["seq"] for r in store.quarantined(gwdb)] == [None, None, None]
    assert store.count_readings(gwdb) == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=600),
    st.text(max_size=400).map(lambda t: "OCMF|" + t),
    st.builds(lambda a, b: f"OCMF|{a}|{b}", st.text(max_size=200), st.text(max_size=200)),
))
def test_hostile_payloads_never_crash_or_store(gwdb, payload):
    if store.get_device(gwdb, "dev1") is None:
        _SIGNER_DEV1.register(gwdb)
    core = make_core(gwdb)
    out = feed(core, [(topic("dev1"), payload)])
    assert out.accepted == 0 and sum(out.rejected.values()) == 1
    assert store.count_readings(gwdb) == 0


_SIGNER_DEV1 = Signer()


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 10**12), imp=st.integers(0, 10**14), exp=st.integers(0, 10**14),
       t=st.integers(0, 253402300799), status=st.sampled_from("UISR"),
       serial=st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="|"),
                      min_size=1, max_size=20))
def test_fast_path_agrees_with_protocol_parser(seq, imp, exp, t, status, serial):
    s = _SIGNER
    raw = s.record(seq, imp, exp, t, status=status, serial=serial).encode()
    rec = ocmf.parse(raw)
    fast = verify.fast_parse(raw)
    expect = (rec.payload_bytes, rec.signature_der, rec.sequence, rec.import_wh, rec.export_wh,
              rec.time_epoch, rec.time_status, rec.meter_serial)
    if fast is not None:
        assert fast == expect
    else:  # only strings needing JSON escapes leave the fast path
        assert '"' in serial or "\\" in serial
    assert verify.verify_one(raw, s.pub) == ("ok", seq, imp, exp, t, status, serial)


_SIGNER = Signer()


def test_fast_path_refuses_near_misses():
    s = _SIGNER
    raw = s.record(7, 1234, 5, T0)
    assert verify.fast_parse(raw) is not None
    for bad in (raw + " ", raw.replace('"FV":"1.0"', '"FV": "1.0"'),
                raw.replace("2026-11", "2026-13"), raw.replace('"PG":"F7"', '"PG":"F07"'),
                raw.replace('"RV":1.234', '"RV":1.2340')):
        assert verify.fast_parse(bad) is None
        # and the general parser reaches the same verdict on the signature
        assert verify.verify_one(bad.encode(), s.pub)[0] in ("ok", "reject")
    # any change to the signed payload is rejected
    rng = random.Random(1)
    start, end = len("OCMF|"), raw.index('|{"SA"')
    for _ in range(300):
        i = rng.randrange(start, end)
        mutated = raw[:i] + chr(rng.randrange(32, 127)) + raw[i + 1:]
        if mutated != raw:
            assert verify.verify_one(mutated.encode(), s.pub)[0] == "reject", mutated


def test_a_message_the_gateway_cannot_store_does_not_hold_up_the_others(gwdb, monkeypatch):
    """A defect that makes one record fail to store (simulated: _accept raises for it)
    must not roll back the good records of its batch on every replay. The batch is stored
    message by message, the bad one quarantined as internal_error, and its sequence is
    chased like a lost record until the device is told to move on."""
    a, b = Signer("dev1"), Signer("dev2")
    a.register(gwdb)
    b.register(gwdb)
    clock = [NOW]
    core = IngestCore(gwdb, COMMUNITY, {"resend_cooldown_s": 10, "gap_give_up": 2},
                      clock=lambda: clock[0])
    poison = a.record(2, 20, 0, T0 + 60)
    real_accept = IngestCore._accept

    def accept(self, m, res, out, touched, now):
        if m.payload == poison.encode():
            raise KeyError("a defect in the gateway")
        return real_accept(self, m, res, out, touched, now)

    monkeypatch.setattr(IngestCore, "_accept", accept)
    out = feed(core, [(topic("dev1"), a.record(1, 10, 0, T0)), (topic("dev1"), poison),
                      (topic("dev2"), b.record(1, 5, 0, T0)), (topic("dev1"), a.record(3, 30, 0, T0 + 120))])
    assert out.accepted == 3 and out.rejected == {"internal_error": 1}
    assert out.acks == {"dev1": 1, "dev2": 1} and out.resend == {"dev1": 2}
    q = store.quarantined(gwdb)
    assert [(r["reason"], r["device_id"]) for r in q] == [("internal_error", "dev1")]
    assert "KeyError" in q[0]["detail"]
    # the device replays it each time it is asked; after gap_give_up requests the gateway
    # records it as lost and acknowledges past it, so the device's log drains
    for _ in range(3):
        clock[0] += 11
        out = feed(core, [(topic("dev1"), poison), (topic("dev1"), a.record(4, 40, 0, T0 + 180))])
    assert out.acks == {"dev1": 4}
    assert [(g["from_seq"], g["to_seq"]) for g in store.gaps(gwdb, "dev1") if g["lost"]] == [(2, 2)]
    assert len(store.quarantined(gwdb)) == 1          # the same message, counted again
