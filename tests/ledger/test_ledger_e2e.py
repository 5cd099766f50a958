"""End to end with every real part: a device publishes signed readings over a secured
mosquitto, `egs-gw run` (ingest, intervals, ledger component) settles them to Anvil,
and `egs-gw ledger reconcile` finds the chain equal to the store and the meter."""
import json
import sys
import time
from pathlib import Path

from gateway import db
from gateway.ingest import store
from gateway.ledger import outbox
from sim.services import Service
from tests.gateway.fixtures import (  # noqa: F401
    ReplayingDevice,
    Signer,
    cleanup_fixture,
    gateway_config,
    secured_broker,
    wait_for,
)
from tests.ledger.fixtures import (
    addr,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
)


def _password(summary, user):
    return Path(summary["credentials"][user]).read_text().strip()


def start_gateway(tmp_path, config_path, db_path):
    """The real `egs-gw run` (all command modules loaded, so [ledger] is a known section;
    `python -m gateway.service` skips them and would refuse the [ledger] section)."""
    svc = Service([sys.executable, "-m", "gateway.cli", "run", "--config", config_path, "--db", db_path],
                  log_path=tmp_path / "gw.log").start()
    conn = db.connect(db_path)
    try:
        def up():
            if not svc.alive:
                raise AssertionError("gateway exited: " + (tmp_path / "gw.log").read_text()[-2000:])
            v, _ = store.get_state(conn, "service")
            return v is not None and v.get("pid") == svc.proc.pid and v.get("connected")
        wait_for(up, timeout=30, what="the gateway to connect")
    finally:
        conn.close()
    return svc


def test_readings_over_mqtt_end_on_chain_and_reconcile_clean(ledger_env, tmp_path, cleanup):
    env = ledger_env
    conn = env.conn()
    s = Signer("meter1")
    s.register(conn, account=addr(1))
    mosq, summary = secured_broker(tmp_path, conn, env.db_path)
    with mosq:
        ledger = dict(env.ledger, tick_s=0.2)
        cfg = gateway_config(tmp_path, mosq.port, summary["gateway_password_file"],
                             gateway={"components": ["ledger"]}, ledger=ledger)
        gw = start_gateway(tmp_path, cfg, env.db_path)  # `egs-gw run` itself (see below)
        cleanup.append(gw)
        dev = ReplayingDevice(mosq.port, s, _password(summary, "meter1")).start()
        cleanup.append(dev)
        now = int(time.time())
        t0 = now - now % 900 - 4 * 900
        # three full intervals: export 300, 500, 200 Wh; import 100, 0, 400 Wh
        regs = [(0, 0), (100, 300), (100, 800), (500, 1000)]
        for i, (imp, exp) in enumerate(regs):
            dev.send(i + 1, s.record(i + 1, imp, exp, t0 + 900 * i))
        wait_for(lambda: dev.max_ack == len(regs), what="readings acked")

        def settled():
            c = db.connect(env.db_path, readonly=True)
            try:
                return outbox.counts(c).get("confirmed", 0) == 3
            finally:
                c.close()
        wait_for(settled, timeout=60, what="three interval settlements confirmed")
        gw.stop()
    chain = env.chain()
    assert chain.balances([addr(1)])[addr(1)][0] == (300 - 100) + 500 + (200 - 400)  # no grid import
    rec = env.cli("ledger", "reconcile", "--json", "--config", cfg, "--db", env.db_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert json.loads(rec.stdout)["applied"] == 3
