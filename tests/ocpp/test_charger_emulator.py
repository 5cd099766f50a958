"""`egs-sim charger` as a technician meets it, against a real central system: a remote
start charges a car, SIGTERM stops the running sessions before the emulator exits, and a
central system frozen mid-call (SIGSTOP) is waited out, not a silent exit."""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main as gw_main
from sim.services import free_port, wait_for, wait_port
from tests.ocpp.fixtures import DEPOSIT, EV_ADDR, PASSWORD, POOL, PRICE, central, db, run, seed

ROOT = Path(__file__).resolve().parents[2]


def _env():
    return dict({k: v for k, v in os.environ.items() if not k.startswith("EGS_")},
                PYTHONUNBUFFERED="1")


def _charger(url, log_path, *args):
    """`egs-sim charger` as its own process, its output in log_path; its password is read
    from a file, as a technician gives it."""
    secret = log_path.with_name("cp1.pw")
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "sim.cli", "charger", "--url", url, "--id", "CP1",
             "--password-file", str(secret), "--connectors", "1", *map(str, args)],
            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _gw(tmp_path, *args):
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                        'min_deposit_eea = "1 EEA"\n')
    result = CliRunner().invoke(gw_main, [*args, "--config", str(conf), "--db",
                                          str(tmp_path / "g.db"), "--json"])
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.output)


def _rows(path, sql, *args):
    conn = db(path)
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_remote_start_charges_a_car_and_sigterm_stops_the_session(tmp_path):
    """A remote start on a connector charges a (default) car: meter values keep coming
    and no traceback; SIGTERM then sends StopTransaction before the emulator exits, so the
    session is settled instead of left active, its idTag locked."""
    path = tmp_path / "g.db"
    seed(path, chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 200 * DEPOSIT)])
    log = tmp_path / "charger.log"

    async def go():
        async with central(path) as cs:
            # the arriving EVs present an unknown idTag: only the remote start charges
            proc = _charger(cs.url, log, "--id-tag", "NOBODY", "--speed", "10000",
                            "--meter-interval", "60", "--ev-every", "600", "--seed", "3")
            try:
                await asyncio.to_thread(wait_for, lambda: _rows(
                    path, "SELECT * FROM ocpp_connectors WHERE charger_id='CP1'"), 30,
                    "the charger to boot")
                got = await asyncio.to_thread(_gw, tmp_path, "charger", "remote-start", "--id",
                                              "CP1", "--id-tag", "TAG1", "--connector", "1")
                assert got["status"] == "Accepted"

                def charging():
                    assert proc.poll() is None, log.read_text()
                    rows = _rows(path, "SELECT COUNT(*) AS n FROM ocpp_meter_values v JOIN "
                                 "ocpp_transactions t ON t.id=v.transaction_id "
                                 "WHERE t.id_tag='TAG1' AND v.context='Sample.Periodic'")
                    return rows[0]["n"] >= 3
                await asyncio.to_thread(wait_for, charging, 30, "meter values of the session")
                rc = await asyncio.to_thread(_stop, proc)
            finally:
                if proc.poll() is None:
                    _stop(proc, signal.SIGKILL)
            out = log.read_text()
            assert "Traceback" not in out, out
            assert rc == 0, out
    run(go(), timeout=120)
    txs = _rows(path, "SELECT * FROM ocpp_transactions WHERE id_tag='TAG1'")
    assert len(txs) == 1
    assert txs[0]["state"] == "settled", txs
    assert txs[0]["energy_wh"] > 0 and txs[0]["stop_reason"] == "Other", txs


def test_charger_waits_out_a_frozen_central_system(tmp_path, mosquitto):
    """The central system (`egs-gw run --ocpp`) is frozen with SIGSTOP while EVs arrive:
    the charger's Authorize goes unanswered; it logs, retries with backoff and carries on
    once the central system is thawed (SIGCONT), instead of exiting."""
    path = tmp_path / "gw.sqlite"
    seed(path, chargers=[("CP1", {})], tags=[("TAG1", EV_ADDR, 200 * DEPOSIT)])
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ncommunity = "oak"\ncomponents = ["ocpp"]\n'
                    f'[mqtt]\nbroker = "127.0.0.1:{mosquitto.port}"\n'
                    f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                    'min_deposit_eea = "1 EEA"\n')
    port = free_port()
    gw_log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", conf,
                           "--db", path, "--ocpp", f"127.0.0.1:{port}"], cwd=ROOT, env=_env(),
                          stdout=gw_log, stderr=subprocess.STDOUT, start_new_session=True)
    gw_log.close()
    log = tmp_path / "charger.log"
    cp = None
    try:
        wait_port(port, timeout=30, proc=gw)
        cp = _charger(f"ws://127.0.0.1:{port}/ocpp", log, "--id-tag", "TAG1", "--speed",
                      "10000", "--meter-interval", "600", "--ev-every", "600",
                      "--response-timeout", "1", "--seed", "5")

        def sessions():
            return _rows(path, "SELECT COUNT(*) AS n FROM ocpp_transactions")[0]["n"]
        wait_for(lambda: sessions() >= 1, 60, "a first session")
        os.kill(gw.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: cp.poll() is not None or "Authorize unanswered" in log.read_text(),
                     60, "the charger to notice the frozen central system")
            assert cp.poll() is None, log.read_text()
            before = sessions()
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        wait_for(lambda: cp.poll() is not None or sessions() > before, 60,
                 "a session after the thaw")
        assert cp.poll() is None, log.read_text()
        assert "retrying" in log.read_text()
        assert _stop(cp) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if cp is not None and cp.poll() is None:
            _stop(cp, signal.SIGKILL)
        if gw.poll() is None:
            os.kill(gw.pid, signal.SIGCONT)
        _stop(gw)


def test_the_password_option_warns_and_a_missing_password_file_is_one_line(tmp_path):
    from sim.cli import main as sim_main
    base = ["charger", "--url", "ws://127.0.0.1:9/ocpp", "--id", "CP1", "--duration", "0"]
    r = CliRunner().invoke(sim_main, [*base, "--password", PASSWORD])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("egs-sim: warning: --password ") and "--password-file" in r.stderr
    r = CliRunner().invoke(sim_main, [*base, "--password-file", str(tmp_path / "nope.pw")])
    assert r.exit_code == 1, r.output
    assert r.stderr == f"egs-sim: error: --password-file: cannot read {tmp_path / 'nope.pw'}: " \
                       "No such file or directory\n"
