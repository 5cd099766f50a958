"""Fixtures for the firmware tests: emulated meter, the real firmware under MicroPython, and a
subscriber that behaves like the gateway (stores each sequence once, acknowledges).

Import the fixtures into a test module by name:
    from tests.firmware.fixtures import device_factory, meter, Subscriber  # noqa: F401
"""
import json
import threading
import time

import paho.mqtt.client as paho
import pytest

from protocol import ocmf
from sim.device import DeviceProcess
from sim.meter import MeterEmulator
from sim.services import wait_for

COMMUNITY = "c1"




def wait_status(dev, pred, what, timeout=20.0):
    """The device's console status once pred(status) holds."""
    def check():
        st = dev.request({"cmd": "status"})
        return st if pred(st) else None
    return wait_for(check, timeout=timeout, what=what)


class Subscriber:
    """A gateway stand-in on the real broker: verifies nothing by itself, stores every
    ocmf record by sequence (a duplicate with the same bytes is stored once, a sequence
    with different bytes is recorded as reused), keeps the retained status, and when
    `ack` is on publishes {"seq": highest contiguous stored} to .../ack like the gateway."""

    def __init__(self, port, community=COMMUNITY, ack=True, host="127.0.0.1"):
        self.community = community
        self.ack = ack
        self.lock = threading.Lock()
        self.records = {}            # device -> {seq: raw}
        self.arrivals = []           # (device, seq) in arrival order, duplicates included
        self.reused = []             # (device, seq, first raw, other raw)
        self.status = {}             # device -> last status payload (decoded)
        self.status_history = []
        self.acked = {}
        self._resent = {}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-sub-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.connected = threading.Event()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1" if host is None else host, port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client, userdata, flags, reason, props):
        client.subscribe(f"egs/v1/{self.community}/+/ocmf", qos=1)
        client.subscribe(f"egs/v1/{self.community}/+/status", qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        device, kind = parts[3], parts[4]
        if kind == "status":
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                doc = msg.payload.decode(errors="replace")
            with self.lock:
                self.status[device] = doc
                self.status_history.append((device, doc))
            return
        raw = msg.payload.decode()
        rec = ocmf.parse(raw)
        seq = rec.sequence
        with self.lock:
            self.arrivals.append((device, seq))
            store = self.records.setdefault(device, {})
            if seq in store:
                if store[seq] != raw:
                    self.reused.append((device, seq, store[seq], raw))
            else:
                store[seq] = raw
            top = self.contiguous(device)
        if self.ack and top:
            self.client.publish(f"egs/v1/{self.community}/{device}/ack",
                                json.dumps({"seq": top}), qos=1)
            self.acked[device] = top
            # like the gateway: a jump forward asks the device to resend the gap
            if seq > top + 1 and time.monotonic() - self._resent.get(device, 0) > 1:
                self._resent[device] = time.monotonic()
                self.client.publish(f"egs/v1/{self.community}/{device}/cmd",
                                    json.dumps({"cmd": "resend", "from": top + 1}), qos=1)

    def contiguous(self, device):
        store = self.records.get(device, {})
        if not store:
            return 0
        n = min(store)
        while n + 1 in store:
            n += 1
        return n

    def seqs(self, device):
        with self.lock:
            return sorted(self.records.get(device, {}))

    def record(self, device, seq):
        with self.lock:
            return self.records[device][seq]

    def cmd(self, device, payload):
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.client.publish(f"egs/v1/{self.community}/{device}/cmd", data, qos=1).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def device_config(device_id, broker_port, meter_port, interval_s=0.5, **extra):
    cfg = {"device_id": device_id, "community": COMMUNITY,
           "broker": {"host": "127.0.0.1", "port": broker_port},
           "meter": {"model": "sdm630", "port": f"tcp:127.0.0.1:{meter_port}",
                     "timeout_ms": 200, "retries": 1},
           "mqtt": {"keepalive_s": 10, "backoff_max_s": 1},
           "interval_s": interval_s}
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def device_factory(tmp_path):
    """device_factory(config dict, name="dev") -> started DeviceProcess; all killed after."""
    made = []

    def make(config, name="dev", start=True, heapsize=None, **kw):
        if heapsize is not None:
            kw["heapsize"] = heapsize
        dev = DeviceProcess(tmp_path / name, config=config, **kw)
        made.append(dev)
        return dev.start() if start else dev

    yield make
    for dev in made:
        dev.kill()


@pytest.fixture
def meter():
    """An SDM630 on RTU-over-TCP with its clock stopped (speed 0): registers change only
    when the test says so."""
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), speed=0, import_wh=1_234_567,
                       export_wh=4_321, serial_number=20241234) as m:
        yield m


@pytest.fixture
def subscriber(mosquitto):
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()
