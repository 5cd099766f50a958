"""Settlement benchmark: one 15-minute interval for many accounts, on Anvil.

    .venv/bin/python bench/settle.py [--quick] [--accounts N] [--baseline-accounts M]

Each account has one device that exported (and imported a little) in the interval; its
signed readings go through the real ingest first (not timed). Timed, the gateway path:
  decide  — the settlement engine: intervals closed, balance book and outbox intents
            written in one SQLite transaction (batches of --batch accounts);
  chain   — the outbox worker: sign and store each transaction, broadcast, wait for
            the receipts (Anvil automine, confirmations 0).
Wall time is decide + chain; gas per account is the gas of all settlement transactions
over the number of accounts. The baseline (one transaction per account, same run) is
described where main() runs it. Targets: wall time < 10 s for 10,000 accounts, gas per
account <= 0.5 x the baseline; figures: docs/ledger.md, "Benchmark".
"""
import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import db
from gateway.ingest import store
from gateway.ingest.core import IngestCore, Message
from gateway.ledger import keystore, tables
from gateway.ledger.chain import Chain
from gateway.ledger.deploy import deploy
from gateway.ledger.settings import Settings
from gateway.ledger.settlement import Engine
from gateway.ledger.worker import Worker
from protocol import ocmf, topics
from sim.services import ANVIL_KEYS, Anvil

COMMUNITY = "bench"
L = 900
T0 = (int(time.time()) - 3 * 3600) // L * L
PASSWORD = "bench"
TARGET_S = 10.0
TARGET_RATIO = 0.5


def account(i, tag):
    return "0x" + f"{tag:04x}{i:036x}"


def make_store(path, n, tag, rnd):
    """n devices with one account each, two signed readings: [T0, T0+L) closes."""
    conn = db.connect(path)
    conn.execute("PRAGMA synchronous=OFF")      # setup speed only; the timed part uses FULL
    tables.init(conn)
    msgs = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint)
        dev = f"d{tag}x{i}"
        store.add_device(conn, dev, pub, f"SN{tag}x{i}", account=account(i, tag), first_seq=1)
        exp = rnd.randrange(100, 5000)
        imp = rnd.randrange(0, exp // 2)
        for seq, t, ri, re in ((1, T0, 1000, 2000), (2, T0 + L, 1000 + imp, 2000 + exp)):
            payload = ocmf.build_payload(seq, ri, re, t, gi="EGS-BENCH", gs=dev, gv="0.1.0",
                                         mv="Eastron", mm="SDM630", ms=f"SN{tag}x{i}")
            der = key.sign(payload, ec.ECDSA(hashes.SHA256()))
            raw = "OCMF|" + payload.decode() + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"' + der.hex() + '"}'
            msgs.append(Message(topics.topic(COMMUNITY, dev, "ocmf"), raw.encode(), T0 + L + 1))
    core = IngestCore(conn, COMMUNITY, {"max_future_s": 10**9}, clock=lambda: T0 + L + 1)
    for i in range(0, len(msgs), 2000):
        part = msgs[i:i + 2000]
        out = core.commit(part, core.verify_inline(core.prepare(part)))
        assert not out.rejected, out.rejected
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def settings_for(tmp, anvil, batch, deployment):
    import gateway.config as config_mod
    cfg_path = tmp / f"gw-{batch}.toml"
    cfg_path.write_text(
        f'[gateway]\ncommunity = "{COMMUNITY}"\n[ledger]\nrpc_url = "{anvil.url}"\n'
        f'keystore = "{tmp / "key.json"}"\ndeployment = "{deployment}"\nconfirmations = 0\n'
        f'grace_s = 60\nbatch_accounts = {batch}\nmax_in_flight = 64\n')
    return Settings(config_mod.load(cfg_path))


def run(tmp, anvil, n, batch, tag, rnd, gateway):
    deployment = tmp / f"deployment-{tag}.json"
    deploy(Chain(anvil.url, 31337), gateway, [account(k, 0xfff0) for k in range(5)],
           account(1, 0xeee0), account(2, 0xeee0), path=deployment)
    conn = make_store(tmp / f"gw-{tag}.sqlite", n, tag, rnd)
    s = settings_for(tmp, anvil, batch, deployment)
    chain = Chain.from_settings(s)
    worker = Worker(conn, chain, gateway, s)
    first_block = chain.block_number()
    t0 = time.perf_counter()
    sids = Engine(s).step(conn, now=T0 + L + 61)
    t1 = time.perf_counter()
    while True:
        worker.step()
        if worker.idle():
            break
    t2 = time.perf_counter()
    gas = sum(r[0] for r in conn.execute("SELECT gas_used FROM ledger_txs WHERE state='confirmed'"))
    blocks = chain.block_number() - first_block
    supply = chain.call(chain.watt.functions.totalSupply().call)
    book = sum(r[0] for r in conn.execute("SELECT SUM(minted_wh) - SUM(burned_wh) FROM ledger_batch_accounts"))
    assert supply == book, (supply, book)
    conn.close()
    return {"accounts": n, "txs": len(sids), "decide_s": t1 - t0, "chain_s": t2 - t1, "wall_s": t2 - t0,
            "gas": gas, "gas_per_account": gas / n, "blocks": blocks}


def main(argv=None):
    p = argparse.ArgumentParser(description="Settle one interval for many accounts on Anvil.")
    p.add_argument("--quick", action="store_true", help="500 accounts, baseline on 100")
    p.add_argument("--accounts", type=int, default=None)
    p.add_argument("--baseline-accounts", type=int, default=None)
    p.add_argument("--full-baseline", action="store_true", help="baseline on every account")
    p.add_argument("--batch", type=int, default=400, help="accounts per settlement transaction")
    a = p.parse_args(argv)
    n = a.accounts or (500 if a.quick else 10_000)
    nb = n if a.full_baseline else (a.baseline_accounts or min(n, 100 if a.quick else 1000))
    rnd = random.Random(5)
    from eth_account import Account
    gateway = Account.from_key(ANVIL_KEYS[0])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        keystore.create(tmp / "key.json", PASSWORD, ANVIL_KEYS[0], kdf="pbkdf2", iterations=1000)
        with Anvil(tmp / "anvil") as anvil:
            print(f"setting up {n} + {nb} devices with signed readings (not timed)...", flush=True)
            batched = run(tmp, anvil, n, a.batch, 1, rnd, gateway)
            # The baseline does the same work as one transaction per account (batch size 1,
            # the same engine, worker and contract, a fresh deployment and fresh accounts so
            # storage costs match), on nb accounts (default 1,000, or all with
            # --full-baseline): gas per account does not depend on how many there are, and
            # its wall time is reported per account and extrapolated.
            base = run(tmp, anvil, nb, 1, 2, rnd, gateway)
    ratio = batched["gas_per_account"] / base["gas_per_account"]
    extrapolated = base["wall_s"] / nb * n
    print()
    print(f"settle one interval, {n} accounts, batches of {a.batch} ({batched['txs']} transactions, "
          f"{batched['blocks']} blocks)")
    print(f"  decide (engine, book, outbox)  {batched['decide_s']:8.2f} s")
    print(f"  chain  (sign, send, receipts)  {batched['chain_s']:8.2f} s")
    print(f"  wall time                      {batched['wall_s']:8.2f} s   target < {TARGET_S:.0f} s  "
          f"{'OK' if batched['wall_s'] < TARGET_S else 'MISSED'}")
    print(f"  gas per account                {batched['gas_per_account']:8.0f}")
    print(f"baseline: one transaction per account, measured on {nb} accounts")
    print(f"  wall time                      {base['wall_s']:8.2f} s   ({base['wall_s'] / nb * 1000:.2f} ms per "
          f"account, {extrapolated:.1f} s extrapolated to {n})")
    print(f"  gas per account                {base['gas_per_account']:8.0f}")
    print(f"gas ratio batched / baseline     {ratio:8.3f}   target <= {TARGET_RATIO}  "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
