"""`egs-gw run` as a real process against real mosquitto (secured with `egs-gw broker
config`): records flow in and are acknowledged only after the commit, bad ones are
quarantined, gaps are asked for again, and a SIGKILL loses nothing acknowledged."""
import json
import signal
import time
from pathlib import Path

from gateway import db
from gateway.ingest import store
from tests.gateway.fixtures import (
    Peer,
    ReplayingDevice,
    Signer,
    cleanup_fixture,  # noqa: F401  (fixture)
    cli_invoke,
    gateway_config,
    gwdb_fixture,  # noqa: F401
    secured_broker,
    start_gateway,
    topic,
    wait_for,
)


def _password(summary, user):
    return Path(summary["credentials"][user]).read_text().strip()


def _stored_seqs(db_path, device="dev1"):
    conn = db.connect(db_path, readonly=True)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM readings WHERE device_id=? ORDER BY seq", (device,))]
    finally:
        conn.close()


def test_ingest_through_mosquitto(tmp_path, gwdb, cleanup):
    db_path = tmp_path / "gw.sqlite"
    s1, s3 = Signer("dev1"), Signer("dev3")
    s1.register(gwdb)
    s3.register(gwdb)
    mosq, summary = secured_broker(tmp_path, gwdb, db_path)
    with mosq:
        cfg = gateway_config(tmp_path, mosq.port, summary["gateway_password_file"],
                             ingest={"resend_cooldown_s": 0.0})
        gw = start_gateway(tmp_path, cfg, db_path)
        cleanup.append(gw)
        dev = ReplayingDevice(mosq.port, s1, _password(summary, "dev1")).start()
        cleanup.append(dev)
        checker = db.connect(db_path, readonly=True)
        cleanup.append(checker)
        violations = []

        def check_ack_committed(client, userdata, msg):   # runs on every ack the device gets
            if msg.topic.endswith("/ack"):
                n = json.loads(msg.payload)["seq"]
                have = {r[0] for r in checker.execute(
                    "SELECT seq FROM readings WHERE device_id='dev1' AND seq<=?", (n,))}
                if have != set(range(1, n + 1)):
                    violations.append((n, sorted(have)))
        dev.c.message_callback_add(topic("dev1", "ack"), lambda c, u, m: (check_ack_committed(c, u, m),
                                                                          dev._on_message(c, u, m)))
        now = int(time.time())
        t0 = now - now % 900 - 2700
        sent = {}
        for i in range(1, 41):
            sent[i] = s1.record(i, 1000 + 25 * i, 3 * i, t0 + 60 * i)
            dev.send(i, sent[i])
        wait_for(lambda: dev.max_ack == 40, what="ack 40")
        # bad input from an authenticated device: all quarantined, nothing stored
        good = s1.record(41, 3000, 200, t0 + 60 * 41)
        bad = [
            good.replace('"RV":3.000', '"RV":9.000'),                   # tampered
            s1.record(41, 3000, 200, t0 + 60 * 41, key=s3.key),          # wrong key
            s1.record(41, 10, 200, t0 + 60 * 41),                        # register decreased
            s1.record(40, 5000, 200, t0 + 60 * 40),                      # sequence reused
            "OCMF|{broken",
            bytes(range(256)),
        ]
        for payload in bad:
            dev.publish(topic("dev1"), payload)
        dev.publish(topic("dev1"), sent[40])                           # a duplicate: acked again
        wait_for(lambda: len(store.quarantined(gwdb)) == len(bad), what="quarantine")
        reasons = sorted(r["reason"] for r in store.quarantined(gwdb))
        assert reasons == sorted(["bad_signature", "bad_signature", "register_decreased",
                                  "sequence_reused", "malformed", "malformed"])
        # a gap: 41 and 42 lost on the way; the gateway asks for them and the device replays
        for i in (41, 42):
            dev.pending[i] = s1.record(i, 1000 + 25 * i, 3 * i, t0 + 60 * i)
        dev.send(43, s1.record(43, 1000 + 25 * 43, 3 * 43, t0 + 60 * 43))
        wait_for(lambda: dev.max_ack == 43, what="ack 43 after the resend")
        assert 41 in dev.resends
        assert _stored_seqs(db_path) == list(range(1, 44))
        assert violations == []
        # revoked from the CLI while running: its next record is refused
        res = cli_invoke("device", "revoke", "--db", db_path, "--id", "dev3", "--broker-dir", tmp_path / "nowhere",
                         "--yes")
        assert res.exit_code == 0, res.stderr
        dev3 = ReplayingDevice(mosq.port, s3, _password(summary, "dev3")).start()   # broker not reloaded
        cleanup.append(dev3)
        dev3.send(1, s3.record(1, 5, 0, now))
        wait_for(lambda: any(r["reason"] == "revoked_device" for r in store.quarantined(gwdb)),
                 what="revoked device quarantined")
        # status and intervals from the CLI while the service runs
        st = json.loads(cli_invoke("status", "--db", db_path, "--json").stdout)
        assert st["service"]["running"] and st["service"]["connected"]
        d1 = next(d for d in st["devices"] if d["id"] == "dev1")
        assert (d1["last_seq"], d1["acked_seq"], d1["missing"]) == (43, 43, 0)
        wait_for(lambda: json.loads(cli_invoke("intervals", "--db", db_path, "--device", "dev1", "--json")
                                    .stdout)["count"] >= 2, what="intervals")
        # the broker restarts: messages the gateway had received but not committed would
        # be gone from the broker, so on reconnecting it asks every device to resend above
        # its ack (seen by a persistent session on dev1's command topic; one connection per
        # user name, so the observer takes dev1's place)
        dev.close()
        observer = Peer(mosq.port, "dev1", _password(summary, "dev1"), client_id="obs-dev1",
                        clean=False)
        assert observer.connect()
        cleanup.append(observer)
        observer.subscribe(topic("dev1", "cmd"))
        mosq.stop()
        mosq.start()
        wait_for(lambda: any(t == topic("dev1", "cmd") and json.loads(p).get("from") == 44
                             for t, p in list(observer.log)), timeout=30,
                 what="resend from 44 after the broker restart")
        wait_for(lambda: json.loads(cli_invoke("status", "--db", db_path, "--json").stdout)
                 ["service"]["connected"], what="gateway reconnected")
        # SIGTERM: a clean stop
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0
        st = json.loads(cli_invoke("status", "--db", db_path, "--json").stdout)
        assert st["service"]["running"] is False
        log = (tmp_path / "gw.log").read_text()
        assert "gateway stopped" in log and "Traceback" not in log


def test_sigkill_during_ingest_loses_nothing_acknowledged(tmp_path, gwdb, cleanup):
    db_path = tmp_path / "gw.sqlite"
    s1 = Signer("dev1")
    s1.register(gwdb)
    mosq, summary = secured_broker(tmp_path, gwdb, db_path)
    n = 600
    with mosq:
        cfg = gateway_config(tmp_path, mosq.port, summary["gateway_password_file"],
                             ingest={"workers": 1, "pool_min_batch": 4, "batch_size": 50,
                                     "resend_cooldown_s": 0.5})
        gw = start_gateway(tmp_path, cfg, db_path, name="gw1")
        cleanup.append(gw)
        dev = ReplayingDevice(mosq.port, s1, _password(summary, "dev1")).start()
        cleanup.append(dev)
        now = int(time.time())
        records = [s1.record(i, 10 * i, i, now - 2 * n + i) for i in range(1, n + 1)]
        killed = False
        for i, rec in enumerate(records, 1):
            dev.send(i, rec)
            if not killed and (dev.max_ack or 0) >= 50:
                gw.kill()                   # SIGKILL to the whole process group, mid-stream
                killed = True
                acked_before = dev.max_ack
                stored = _stored_seqs(db_path)
                assert set(range(1, acked_before + 1)) <= set(stored), "an acknowledged reading is missing"
            if i % 50 == 0:
                time.sleep(0.02)
        if not killed:
            wait_for(lambda: (dev.max_ack or 0) >= 50, what="first acks")
            gw.kill()
            acked_before = dev.max_ack
            assert set(range(1, acked_before + 1)) <= set(_stored_seqs(db_path))
        assert acked_before < n
        gw2 = start_gateway(tmp_path, cfg, db_path, name="gw2")
        try:
            wait_for(lambda: dev.max_ack == n and not dev.pending, timeout=60, what="everything acked")
            assert _stored_seqs(db_path) == list(range(1, n + 1))
            assert store.quarantined(gwdb) == []
        finally:
            gw2.stop()
            dev.close()


def test_run_json_logs_one_object_per_line(tmp_path):
    """`egs-gw run --json`: every log line is a JSON object a log collector can read,
    here while the broker cannot be reached."""
    import sys

    from sim.services import Service, free_port
    log = tmp_path / "gw.log"
    svc = Service([sys.executable, "-m", "gateway.service", "--db", tmp_path / "gw.sqlite",
                   "--community", "c1", "--broker", f"127.0.0.1:{free_port()}", "--json"],
                  log_path=log).start()
    try:
        wait_for(lambda: "retrying" in log.read_text(), what="a broker warning")
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(15)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert code == 0 and lines
    assert all(set(obj) >= {"at", "level", "logger", "message"} for obj in lines)
    assert any(o["level"] == "WARNING" and "retrying" in o["message"] for o in lines)
