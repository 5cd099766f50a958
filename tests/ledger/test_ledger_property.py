"""Property: random reading streams for many devices — gaps, duplicates, late
arrivals, devices without an account, with and without storage commission — are
settled through the real ingest, engine, outbox worker and Anvil. Afterwards, per
account, WATT minted − burned on chain equals metered export − settled import
(import − grid import, grid import only where the balance ran out), and
`reconcile` finds no difference."""
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.ingest import intervals
from gateway.ledger import keystore
from gateway.ledger.reconcile import reconcile
from gateway.ledger.settlement import Engine
from gateway.ledger.worker import Worker
from sim.services import Anvil
from tests.ledger.fixtures import PASSWORD, T0, L, LedgerEnv, Signer, addr, ingest

ZERO = "0x" + "00" * 20
# Modest by default (each example deploys contracts and settles on Anvil); raise it to hunt.
# Shrinking is off: one example takes about a second, a shrink run many minutes.
EXAMPLES = int(os.environ.get("LEDGER_PROP_EXAMPLES", "12"))

step = st.tuples(st.integers(60, 2400), st.integers(0, 2500), st.integers(0, 2500))
device = st.fixed_dictionaries({
    "account": st.integers(-1, 3),            # -1: a device nobody registered an account for
    "offset": st.integers(0, 899),
    "steps": st.lists(step, min_size=1, max_size=7),
    "late": st.sets(st.integers(0, 7), max_size=3),
    "dups": st.sets(st.integers(0, 7), max_size=3),
    "tail": st.tuples(st.integers(0, 900), st.integers(0, 900)),
})


def readings(d):
    t, imp, exp = T0 + d["offset"], 0, 0
    rows = [(1, t, imp, exp)]
    for dt, di, de in d["steps"]:
        t, imp, exp = t + dt, imp + di, exp + de
        rows.append((len(rows) + 1, t, imp, exp))
    end = intervals.interval_start(t) + 2 * L     # the last reading sits on a boundary
    tail = (len(rows) + 1, end, imp + d["tail"][0], exp + d["tail"][1])
    return rows, tail


def drain(w):
    for _ in range(100):
        w.step()
        if w.idle():
            return
    raise AssertionError("outbox not drained")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(devices=st.lists(device, min_size=1, max_size=6), rate=st.sampled_from([0, 3 * 10**14]),
       seed=st.integers(0, 2**32))
def test_minted_minus_burned_is_metered_export_minus_settled_import(anvil_shared, devices, rate, seed):
    rnd = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(dir=anvil_shared.workdir))
    env = LedgerEnv(tmp, anvil_shared, batch_accounts=2, commission_rate=rate, max_in_flight=3)
    env.deploy()
    conn = env.conn()
    for a in range(4):
        if rate and a % 2 == 0:
            env.deposit(addr(a), 10**18 + a)   # some accounts prepaid commission, others not
    phase1, phase2, truth = [], [], {}
    for n, d in enumerate(devices):
        s = Signer(f"dev{n}", f"SN{n}")
        account = addr(d["account"]) if d["account"] >= 0 else None
        s.register(conn, account=account, first_seq=1)
        rows, tail = readings(d)
        first_late = [r for i, r in enumerate(rows) if i in d["late"]]
        early = [r for i, r in enumerate(rows) if i not in d["late"]]
        early += [r for i, r in enumerate(rows) if i in d["dups"]]        # duplicates
        rnd.shuffle(early)
        phase1.append((s, early))
        phase2.append((s, first_late + [tail] + [r for i, r in enumerate(rows) if i in d["dups"]]))
        truth[n] = (account, tail[2] - rows[0][2], tail[3] - rows[0][3], tail[1])

    eng = Engine(env.settings)
    w = Worker(conn, env.chain(), keystore.load(env.keystore, PASSWORD), env.settings)
    for s, rows in phase1:
        if rows:
            ingest(conn, s, rows)
    mid = max(r[1] for _, rows in phase1 for r in rows) + rnd.randrange(0, 2 * L) if any(
        rows for _, rows in phase1) else T0
    eng.step(conn, now=mid)
    drain(w)
    for s, rows in phase2:
        ingest(conn, s, rows)
    end = max(t for _, _, _, t in truth.values()) + L + 61
    eng.step(conn, now=end)
    eng.step(conn, now=end + 5)
    drain(w)

    chain = env.chain()
    assert all(r["state"] == "settled" for r in intervals.list_intervals(conn, limit=10**6))
    assert intervals.pending_adjustments(conn) == []
    minted, burned = {}, {}
    for ev in chain.events(chain.watt, "Transfer", int(env.dep["block"]), chain.block_number()):
        a = ev["args"]
        if a["sender"] == ZERO:
            minted[a["receiver"].lower()] = minted.get(a["receiver"].lower(), 0) + a["value"]
        if a["receiver"] == ZERO:
            burned[a["sender"].lower()] = burned.get(a["sender"].lower(), 0) + a["value"]
    grid = {r[0]: r[1] for r in conn.execute(
        "SELECT account, SUM(grid_import_wh) FROM ledger_batch_accounts GROUP BY account")}
    for acct in {a for a, *_ in truth.values() if a}:
        export = sum(e for a, _, e, _ in truth.values() if a == acct)
        imp = sum(i for a, i, _, _ in truth.values() if a == acct)
        g = grid.get(acct, 0)
        assert g >= 0
        assert minted.get(acct, 0) - burned.get(acct, 0) == export - (imp - g)
        assert chain.balances([acct])[acct][0] == export - (imp - g)
    # grid import only where the WATT balance ran out in that batch
    for r in conn.execute("SELECT * FROM ledger_batch_accounts WHERE grid_import_wh > 0"):
        assert r["minted_wh"] == 0 and r["stored_wh"] + r["export_wh"] - r["import_wh"] + r["grid_import_wh"] == 0
    report = reconcile(conn, chain)
    assert report["differences"] == []
    assert report["unassigned_export_wh"] == sum(e for a, _, e, _ in truth.values() if a is None)
    conn.close()


@pytest.fixture(scope="module")
def anvil_shared(tmp_path_factory):
    """One Anvil for all examples; each example deploys its own contracts and store."""
    with Anvil(tmp_path_factory.mktemp("anvil")) as chain:
        yield chain
