"""`egs-gw run --ocpp HOST:PORT` as a real process: a charger connects, the CLI (another
process) commands it through the service, SIGTERM stops it cleanly."""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.db import transaction
from ocpp_cs import auth, store
from sim.charger import SimChargePoint
from sim.services import free_port, wait_port
from tests.ocpp.fixtures import EV_ADDR, FAST, PASSWORD, POOL, PRICE, db, run

ROOT = Path(__file__).resolve().parents[2]


def egs_gw(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_service_serves_chargers_and_cli_commands(tmp_path, mosquitto):
    path = tmp_path / "gw.sqlite"
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ncommunity = "oak"\ncomponents = ["ocpp"]\n'
                    f'[mqtt]\nbroker = "127.0.0.1:{mosquitto.port}"\n'
                    f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                    'command_poll_s = 0.05\n')
    conn = db(path)
    with transaction(conn):
        store.add_charger(conn, "CP1", auth.hash_password(PASSWORD, **FAST))
        store.add_id_tag(conn, "TAG1", EV_ADDR)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", conf,
                             "--db", path, "--ocpp", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_port(port, timeout=30, proc=proc)

        async def go():
            cp = SimChargePoint(f"ws://127.0.0.1:{port}/ocpp", "CP1", password=PASSWORD)
            await cp.start()
            try:
                await cp.wait_connected(20)
                res = await asyncio.to_thread(egs_gw, "charger", "config", "get", "--id", "CP1",
                                              "HeartbeatInterval", "--config", conf, "--db", path,
                                              "--json")
                assert res.returncode == 0, res.stderr
                assert json.loads(res.stdout)["configurationKey"][0]["value"] == "300"
                res = await asyncio.to_thread(egs_gw, "charger", "remote-start", "--id", "CP1",
                                              "--id-tag", "TAG1", "--config", conf, "--db", path)
                assert res.returncode == 0 and "Accepted" in res.stdout, res.stderr
                while cp.connectors[1].tx is None or cp.connectors[1].tx.id is None:
                    await asyncio.sleep(0.05)
            finally:
                await cp.close()
        run(go(), timeout=90)
        assert db(path).execute("SELECT COUNT(*) FROM ocpp_transactions").fetchone()[0] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "OCPP central system on ws://127.0.0.1" in out


def test_egs_sim_charger_serves_evs_that_are_billed(tmp_path):
    """`egs-sim charger` as a process: EVs arrive, charge at their power and leave; every
    session reaches the central system and is settled from meterStart..meterStop."""
    from tests.ocpp.fixtures import DEPOSIT, central, seed

    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 200 * DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs:
            env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sim.cli", "charger", "--url", cs.url, "--id", "CP1",
                "--password", PASSWORD, "--connectors", "1", "--id-tag", "TAG1",
                "--speed", "10000", "--meter-interval", "600", "--ev-every", "600",
                "--duration", "6", "--seed", "7", cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode()
    run(go(), timeout=90)
    rows = db(tmp_path / "g.db").execute(
        "SELECT state, energy_wh, review_reason, stop_reason FROM ocpp_transactions "
        "ORDER BY id").fetchall()
    settled = [r for r in rows if r["state"] == "settled"]
    # a car still charging when --duration ends is stopped as the charger switches off
    # (reason Other), possibly before its first Wh
    assert settled and all(r["energy_wh"] > 0 for r in settled if r["stop_reason"] != "Other"), \
        [tuple(r) for r in rows]
    assert not [r for r in rows if r["state"] == "active"], [tuple(r) for r in rows]
    assert not [r for r in rows if r["state"] == "review"], [tuple(r) for r in rows]
