"""The settlement engine against a real store fed through the real ingest (no chain):
netting, burn up to the balance, grid import, commission, batches and ids, late data,
records hash, one transaction."""
import json
import sqlite3

import pytest
from eth_utils import keccak

from gateway import accounts
from gateway.db import transaction
from gateway.ingest import intervals
from gateway.ledger import commission, outbox
from gateway.ledger.settlement import Engine, grid_import, latest_closed_start
from gateway.ledger.storage import set_capacity
from tests.ledger.fixtures import COMMUNITY, EDU, NET, T0, L, Signer, addr, ingest

RATE = 2 * 10**15  # EEA base units per kWh per interval


class FakeSettings:
    """Only what the engine reads (the real Settings is tested through the CLI)."""

    def __init__(self, **kw):
        self.community = COMMUNITY
        self.grace_s = 60
        self.batch_accounts = 3
        self.max_tx_gas = 16_000_000
        self.commission_rate = 0
        self.education_pool = EDU
        self.network_pool = NET
        for k, v in kw.items():
            setattr(self, k, v)


@pytest.fixture
def conn(tmp_path):
    from gateway import db
    from gateway.ledger import tables
    c = db.connect(tmp_path / "gw.sqlite")
    tables.init(c)
    yield c
    c.close()


def device(conn, n, account):
    s = Signer(f"dev{n}", f"SN{n}")
    s.register(conn, account=account)
    return s


def intents(conn):
    return [(r["kind"], r["settlement_id"], json.loads(r["payload"]))
            for r in conn.execute("SELECT * FROM ledger_outbox ORDER BY id")]


def bal(conn, a, asset="WATT"):
    return accounts.balance(conn, a, asset)


def test_export_mints_import_burns_up_to_balance_rest_is_grid_import(conn):
    a = addr(1)
    s = device(conn, 1, a)
    # interval 0: export 500, import 200 -> mint 300; interval 1: import 1000, export 100 -> burn 300, grid 600
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 200, 500), (3, T0 + 2 * L, 1200, 600)])
    sids = Engine(FakeSettings()).step(conn, now=T0 + 2 * L + 60)
    assert len(sids) == 2
    (k0, sid0, p0), (_, sid1, p1) = intents(conn)
    assert (k0, p0["entries"], p0["start"], p0["batch"]) == ("interval", [[a, 300, 0, 0]], T0, 0)
    assert p1["entries"] == [[a, 0, 300, 0]]
    assert sid0 == outbox.settlement_id(COMMUNITY, T0, 0) and sid1 == outbox.settlement_id(COMMUNITY, T0 + L, 0)
    assert bal(conn, a) == 0 and grid_import(conn) == {a: 600}
    assert all(r["state"] == "settled" for r in intervals.list_intervals(conn))


def test_nothing_is_settled_before_the_grace_period_and_nothing_twice(conn):
    s = device(conn, 1, addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 0, 100)])
    eng = Engine(FakeSettings(grace_s=120))
    assert eng.step(conn, now=T0 + L + 119) == []
    assert len(eng.step(conn, now=T0 + L + 120)) == 1
    assert eng.step(conn, now=T0 + L + 5000) == []
    assert bal(conn, addr(1)) == 100


def test_accounts_are_cut_into_batches_with_numbered_ids(conn):
    accts = [addr(i) for i in range(7)]
    for i, a in enumerate(accts):
        ingest(conn, device(conn, i, a), [(1, T0, 0, 0), (2, T0 + L, 0, 10 + i)])
    sids = Engine(FakeSettings(batch_accounts=3)).step(conn, now=T0 + L + 60)
    assert sids == [outbox.settlement_id(COMMUNITY, T0, b) for b in range(3)]
    sizes = [len(p["entries"]) for _, _, p in intents(conn)]
    assert sizes == [3, 3, 1]
    assert sorted(e[0] for _, _, p in intents(conn) for e in p["entries"]) == sorted(accts)


def test_two_devices_of_one_account_are_netted(conn):
    a = addr(1)
    ingest(conn, device(conn, 1, a), [(1, T0, 0, 0), (2, T0 + L, 0, 700)])
    ingest(conn, device(conn, 2, a), [(1, T0, 0, 0), (2, T0 + L, 250, 0)])
    Engine(FakeSettings()).step(conn, now=T0 + L + 60)
    assert [p["entries"] for _, _, p in intents(conn)] == [[[a, 450, 0, 0]]]


def test_a_late_device_settles_the_same_interval_in_the_next_batch(conn):
    a, b = addr(1), addr(2)
    ingest(conn, device(conn, 1, a), [(1, T0, 0, 0), (2, T0 + L, 0, 100)])
    late = device(conn, 2, b)
    eng = Engine(FakeSettings())
    eng.step(conn, now=T0 + L + 60)
    ingest(conn, late, [(1, T0, 0, 0), (2, T0 + L, 0, 40)])   # arrives an hour late
    sids = eng.step(conn, now=T0 + 5 * L)
    assert sids == [outbox.settlement_id(COMMUNITY, T0, 1)]
    assert intents(conn)[-1][2]["entries"] == [[b, 40, 0, 0]]


def test_late_readings_of_a_settled_interval_become_an_adjustment_in_the_next(conn):
    a = addr(1)
    s = device(conn, 1, a)
    # seq 2 is missing at first: the interval [T0, T0+L) is interpolated between seq 1 and 3
    ingest(conn, s, [(1, T0, 0, 0), (3, T0 + 2 * L, 0, 1000)])
    eng = Engine(FakeSettings())
    eng.step(conn, now=T0 + 2 * L + 60)
    assert bal(conn, a) == 1000
    # seq 2 arrives: really 900 Wh were exported in the first interval, 100 in the second
    ingest(conn, s, [(2, T0 + L, 0, 900), (4, T0 + 3 * L, 0, 1000)])
    eng.step(conn, now=T0 + 3 * L + 60)
    assert bal(conn, a) == 1000  # nothing new, nothing lost: the +400/-400 nets to zero
    entries = [p["entries"] for _, _, p in intents(conn)]
    assert entries == [[[a, 500, 0, 0]], [[a, 500, 0, 0]]]  # the third interval: 0 metered, 0 adjusted net
    row = next(r for r in intervals.list_intervals(conn) if r["start"] == T0 + 2 * L)
    assert (row["adjust_export_wh"], row["state"]) == (0, "settled")


def test_correction_reduces_an_overstated_export(conn):
    a = addr(1)
    s = device(conn, 1, a)
    ingest(conn, s, [(1, T0, 0, 0), (3, T0 + 2 * L, 0, 1000)])
    eng = Engine(FakeSettings())
    eng.step(conn, now=T0 + 2 * L + 60)
    # the gap reading shows the export was all in the second interval, and a third arrives
    ingest(conn, s, [(2, T0 + L, 0, 0), (4, T0 + 3 * L, 0, 1000)])
    eng.step(conn, now=T0 + 3 * L + 60)
    # first interval was settled with 500 that really belonged to the second (also settled,
    # with 500): the adjustments -500 / +500 both land in the third interval
    assert bal(conn, a) == 1000


def test_devices_without_account_are_marked_and_never_minted(conn):
    ingest(conn, device(conn, 1, None), [(1, T0, 0, 0), (2, T0 + L, 0, 300)])
    assert Engine(FakeSettings()).step(conn, now=T0 + L + 60) == []
    (row,) = intervals.list_intervals(conn)
    assert row["state"] == "settled" and row["settlement_id"].startswith("none:")
    assert intents(conn) == []


def test_commission_is_charged_per_interval_on_the_stored_balance_and_split(conn):
    a, b = addr(1), addr(2)
    owners = [addr("s1"), addr("s2")]
    set_capacity(conn, COMMUNITY, owners[0], 10_000)
    set_capacity(conn, COMMUNITY, owners[1], 3_333)
    accounts.credit(conn, a, "EEA", 10**18, reason="eea_deposit", ref="test-a")
    accounts.credit(conn, b, "EEA", 10**12, reason="eea_deposit", ref="test-b")  # too little
    ingest(conn, device(conn, 1, a), [(1, T0, 0, 0), (2, T0 + L, 0, 1500), (3, T0 + 2 * L, 0, 1500)])
    ingest(conn, device(conn, 2, b), [(1, T0, 0, 0), (2, T0 + L, 0, 2000), (3, T0 + 2 * L, 0, 2000)])
    eng = Engine(FakeSettings(commission_rate=RATE))
    eng.step(conn, now=T0 + L + 60)          # first interval: balances were 0, nothing due
    eng.step(conn, now=T0 + 2 * L + 60)      # second: a stored 1500 Wh, b 2000 Wh
    due_a, due_b = commission.due(1500, RATE), commission.due(2000, RATE)
    assert due_a == 3 * 10**15 and due_b == 4 * 10**15
    last = intents(conn)[-1][2]["entries"]
    assert sorted(last) == sorted([[a, 0, 0, due_a], [b, 0, 0, 10**12]])
    total = due_a + 10**12
    split = dict(commission.split(total, [(owners[0], 10_000), (owners[1], 3_333)], EDU, NET))
    for who, amount in split.items():
        assert bal(conn, who, "EEA") == amount
    assert sum(split.values()) == total
    assert bal(conn, b, "EEA") == 0 and bal(conn, a, "EEA") == 10**18 - due_a
    row = conn.execute("SELECT commission_due, commission_eea FROM ledger_batch_accounts "
                       "WHERE account=? AND stored_wh=2000", (b,)).fetchone()
    assert (int(row[0]), int(row[1])) == (due_b, 10**12)
    # three more intervals pass with no readings at all: still charged, once each
    eng.step(conn, now=T0 + 5 * L + 60)
    assert bal(conn, a, "EEA") == 10**18 - 4 * due_a
    eng.step(conn, now=T0 + 5 * L + 61)
    assert bal(conn, a, "EEA") == 10**18 - 4 * due_a


def test_intervals_closed_while_the_rate_was_zero_are_never_charged_later(conn):
    a = addr(1)
    accounts.credit(conn, a, "EEA", 10**18, reason="eea_deposit", ref="test-a")
    ingest(conn, device(conn, 1, a), [(1, T0, 0, 0), (2, T0 + L, 0, 1500)])
    Engine(FakeSettings(commission_rate=RATE)).step(conn, now=T0 + L + 60)   # mints 1500
    assert bal(conn, a) == 1500 and bal(conn, a, "EEA") == 10**18
    Engine(FakeSettings(commission_rate=0)).step(conn, now=T0 + 5 * L + 60)  # commission switched off
    assert bal(conn, a, "EEA") == 10**18
    # switched on again: only the interval that closed since is charged, not the four before
    Engine(FakeSettings(commission_rate=RATE)).step(conn, now=T0 + 6 * L + 60)
    assert bal(conn, a, "EEA") == 10**18 - commission.due(1500, RATE)
    charged = [r[0] for r in conn.execute(
        "SELECT b.start FROM ledger_batches b JOIN ledger_batch_accounts x USING(settlement_id) "
        "WHERE x.account=? AND x.commission_eea != '0'", (a,))]
    assert charged == [T0 + 5 * L]


def test_records_hash_is_recomputable_from_the_stored_raw_records(conn):
    a = addr(1)
    s = device(conn, 1, a)
    ingest(conn, s, [(1, T0 - 100, 0, 0), (2, T0 + 400, 0, 50), (3, T0 + L + 30, 0, 120)])
    Engine(FakeSettings()).step(conn, now=T0 + L + 90)
    # the first intent is the partial interval before T0; the one for [T0, T0+L) rests on all three
    (_, sid, payload), = [i for i in intents(conn) if i[2]["start"] == T0]
    raws = [r["raw"] for r in conn.execute("SELECT raw FROM readings ORDER BY seq")]
    assert payload["records_hash"] == "0x" + keccak(b"".join(keccak(r.encode()) for r in raws)).hex()
    row = conn.execute("SELECT records FROM ledger_batches WHERE settlement_id=?", (sid,)).fetchone()
    assert json.loads(row[0]) == [["dev1", [1, 2, 3]]]


def test_a_failed_settlement_leaves_no_trace(conn, monkeypatch):
    a = addr(1)
    ingest(conn, device(conn, 1, a), [(1, T0, 0, 0), (2, T0 + L, 0, 100)])
    from gateway.ledger import settlement

    def boom(*args, **kw):
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(settlement.outbox, "enqueue", boom)
    with pytest.raises(sqlite3.OperationalError):
        Engine(FakeSettings()).step(conn, now=T0 + L + 60)
    assert bal(conn, a) == 0 and intents(conn) == []
    assert conn.execute("SELECT COUNT(*) FROM ledger_batches").fetchone()[0] == 0
    assert all(r["state"] == "open" for r in intervals.list_intervals(conn))
    monkeypatch.undo()
    assert len(Engine(FakeSettings()).step(conn, now=T0 + L + 60)) == 1
    assert bal(conn, a) == 100


def test_latest_closed_start():
    assert latest_closed_start(T0 + L + 60, 60) == T0
    assert latest_closed_start(T0 + L + 59, 60) == T0 - L


def test_withdraw_and_storage_land_with_their_intent(conn):
    from gateway.ledger.storage import StorageError, withdraw
    a = addr(1)
    accounts.credit(conn, a, "EEA", 500, reason="eea_deposit", ref="x")
    sid = withdraw(conn, COMMUNITY, a, 200)
    assert bal(conn, a, "EEA") == 300 and intents(conn)[-1][:2] == ("withdraw", sid)
    with pytest.raises(accounts.BalanceError):
        withdraw(conn, COMMUNITY, a, 301)
    assert len(intents(conn)) == 1
    with pytest.raises(StorageError):
        set_capacity(conn, COMMUNITY, a, -1)
    with pytest.raises(accounts.BalanceError):
        set_capacity(conn, COMMUNITY, "0x123", 5)
    # the contract reverts these for the zero address: a reverting intent would block the queue
    zero = "0x" + "00" * 20
    with pytest.raises(StorageError, match="zero address"):
        set_capacity(conn, COMMUNITY, zero, 5)
    with pytest.raises(StorageError, match="zero address"):
        withdraw(conn, COMMUNITY, zero, 1)
    with pytest.raises(StorageError, match="at most"):   # beyond SQLite's INTEGER
        set_capacity(conn, COMMUNITY, a, 10**23)
    with pytest.raises(StorageError):
        set_capacity(conn, COMMUNITY, a, True)
    assert len(intents(conn)) == 1 and bal(conn, a, "EEA") == 300
    assert conn.execute("SELECT COUNT(*) FROM ledger_storage").fetchone()[0] == 0
    with transaction(conn):
        pass
