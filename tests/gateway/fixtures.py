"""Helpers for the gateway tests: devices with their own keys signing OCMF readings.

Records are built with protocol.ocmf.build_payload (the device's exact layout)
and signed with `cryptography` (fast; the pure-Python signer is tested elsewhere).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import db
from gateway.ingest import store
from protocol import ocmf
from sim.services import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMMUNITY = "testcomm"
T0 = 1795000500 - 1795000500 % 900   # a quarter-hour boundary in Nov 2026


class Signer:
    def __init__(self, device_id="dev1", serial=None):
        self.id = device_id
        self.serial = serial or f"SN-{device_id}"    # one meter per device (the store insists)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pub = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def payload(self, seq, imp, exp, t=T0, status="S", serial=None):
        return ocmf.build_payload(seq, imp, exp, t, gi="EGS-TEST", gs=self.id, gv="0.1.0",
                                  mv="Eastron", mm="SDM630", ms=serial or self.serial,
                                  time_status=status)

    def sign(self, payload, key=None):
        der = (key or self.key).sign(payload, ec.ECDSA(hashes.SHA256()))
        return ("OCMF|" + payload.decode() + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"'
                + der.hex().upper() + '"}')

    def record(self, seq, imp, exp, t=T0, status="S", serial=None, key=None):
        return self.sign(self.payload(seq, imp, exp, t, status, serial), key)

    def register(self, conn, account=None, first_seq=None):
        return store.add_device(conn, self.id, self.pub, self.serial, account=account,
                                first_seq=first_seq)


def topic(device, kind="ocmf", community=COMMUNITY):
    return f"egs/v1/{community}/{device}/{kind}"


@pytest.fixture(name="gwdb")
def gwdb_fixture(tmp_path):
    path = tmp_path / "gw.sqlite"
    conn = db.connect(path)
    store.init(conn)
    yield conn
    conn.close()


def egs_gw(*args, env=None, input=None, timeout=60):
    """Run the real `egs-gw` console script; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("EGS_GW_CONFIG", None)
    e.pop("EGS_GW_DB", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=e, input=input, timeout=timeout,
                          check=False)


def cli_invoke(*args, input=None):
    """`egs-gw` in this process (click's CliRunner): quick, same code as the console script."""
    from click.testing import CliRunner

    from gateway.cli import main
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False,
                              env={"EGS_GW_CONFIG": None, "EGS_GW_DB": None})




def jloads(text):
    return json.loads(text)


class Peer:
    """A real MQTT client (paho, own network thread) for tests: records what it receives."""

    def __init__(self, port, user=None, password=None, client_id=None, clean=True):
        import queue
        import threading

        import paho.mqtt.client as mqtt

        self.received = queue.Queue()
        self.log = []
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.reason = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                             clean_session=clean)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.max_inflight_messages_set(200)
        self.port = port

    def _on_connect(self, client, userdata, flags, reason, props):
        self.reason = reason
        if not reason.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_message(self, client, userdata, msg):
        item = (msg.topic, bytes(msg.payload))
        self.log.append(item)
        self.received.put(item)

    def connect(self, timeout=10):
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        self.answered.wait(timeout)
        return self.connected.is_set()

    def subscribe(self, topic_filter, qos=1):
        info = []
        import threading
        done = threading.Event()

        def on_sub(client, userdata, mid, reasons, props):
            info.extend(reasons)
            done.set()

        self.c.on_subscribe = on_sub
        self.c.subscribe(topic_filter, qos)
        done.wait(10)
        return info

    def publish(self, topic_, payload, qos=1, retain=False, wait=True):
        info = self.c.publish(topic_, payload, qos=qos, retain=retain)
        if wait and qos:
            info.wait_for_publish(10)
        return info

    def get(self, timeout=10):
        import queue
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def secured_broker(tmp_path, conn, db_path, community=COMMUNITY):
    """`egs-gw broker config` into tmp_path/broker and a real mosquitto on it."""
    from sim.services import Mosquitto, free_port
    port = free_port()
    res = cli_invoke("broker", "config", "--db", db_path, "--out", tmp_path / "broker", "--community",
                     community, "--port", port, "--run-as", "root", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    text = Path(summary["config"]).read_text()
    return Mosquitto(tmp_path / "broker", port=port, config_text=text), summary


class ReplayingDevice(Peer):
    """Publishes signed records like the firmware: keeps each until the gateway's ack
    covers it, and replays from N on {"cmd":"resend","from":N}."""

    def __init__(self, port, signer, password, community=COMMUNITY):
        import threading
        super().__init__(port, signer.id, password, client_id=f"fw-{signer.id}")
        self.signer = signer
        self.community = community
        self.pending = {}          # seq -> record
        self.acks = []             # every ack value received, in order
        self.resends = []
        self.lock = threading.Lock()

    def _on_message(self, client, userdata, msg):
        super()._on_message(client, userdata, msg)
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        kind = msg.topic.rsplit("/", 1)[1]
        if kind == "ack" and isinstance(body.get("seq"), int):
            with self.lock:
                self.acks.append(body["seq"])
                for s in [s for s in self.pending if s <= body["seq"]]:
                    del self.pending[s]
        elif kind == "cmd" and body.get("cmd") == "resend":
            self.resends.append(body["from"])
            with self.lock:
                replay = sorted((s, r) for s, r in self.pending.items() if s >= body["from"])
            for _, rec in replay:
                self.c.publish(topic(self.signer.id, "ocmf", self.community), rec, qos=1)

    def start(self):
        assert self.connect()
        self.subscribe(topic(self.signer.id, "ack", self.community))
        self.subscribe(topic(self.signer.id, "cmd", self.community))
        return self

    def send(self, seq, record):
        with self.lock:
            self.pending[seq] = record
        self.c.publish(topic(self.signer.id, "ocmf", self.community), record, qos=1)

    @property
    def max_ack(self):
        with self.lock:
            return max(self.acks, default=None)


def gateway_config(tmp_path, port, password_file, community=COMMUNITY, **sections):
    """A gateway.toml for tests: no plug-in components, fast interval ticks."""
    body = {
        "gateway": {"community": community, "components": []},
        "mqtt": {"broker": f"127.0.0.1:{port}", "user": "egs-gateway", "password_file": str(password_file)},
        "intervals": {"tick_s": 0.3},
    }
    for name, values in sections.items():
        body.setdefault(name, {}).update(values)
    lines = []
    for name, values in body.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_gateway(tmp_path, config_path, db_path, name="gw"):
    """`egs-gw run` as a real process (own process group); waits until it is connected."""
    from gateway import db as db_mod
    from sim.services import Service
    svc = Service([sys.executable, "-m", "gateway.service", "--config", config_path, "--db", db_path],
                  log_path=tmp_path / f"{name}.log").start()
    conn = db_mod.connect(db_path)
    try:
        def up():
            if not svc.alive:
                raise AssertionError("gateway exited: " + (tmp_path / f"{name}.log").read_text()[-2000:])
            v, _ = store.get_state(conn, "service")
            return v is not None and v.get("pid") == svc.proc.pid and v.get("connected")
        wait_for(up, timeout=30, what="the gateway to connect")
    finally:
        conn.close()
    return svc


@pytest.fixture(name="cleanup")
def cleanup_fixture():
    """Things with stop()/close() to end after the test, even when it fails."""
    items = []
    yield items
    import contextlib
    for item in reversed(items):
        with contextlib.suppress(Exception):   # best effort at teardown
            (getattr(item, "stop", None) or item.close)()
