"""The device checks who the broker is before it says a word, and trusts acks only for
what it sent.

A fake broker with a certificate from another CA (or from the right CA but for another
host name) must never see the device's MQTT password: the firmware refuses the TLS
handshake. With the community's CA, installed over the console, and a broker certificate
naming the host the device dials, it connects to real mosquitto over TLS. An ack for a
sequence the device has not sent in the current connection deletes nothing.

The TLS devices get TLS_HEAP: on the unix port mbedTLS allocates on the MicroPython heap
(about 15 KB while a context is set up), on the ESP32 it has the IDF heap of its own.
"""
import base64
import json
import socket
import ssl
import threading

import paho.mqtt.client as paho
import pytest

from sim.services import Mosquitto, free_port, wait_port
from tests.firmware.certs import CA
from tests.firmware.fixtures import (  # noqa: F401
    COMMUNITY,
    Subscriber,
    device_config,
    device_factory,
    meter,
    wait_for,
    wait_status,
)

PASSWORD = "mqtt-pw-must-stay-secret"
TLS_HEAP = "140K"       # the firmware's 100K budget plus what mbedTLS takes on the unix port


def send_ca(dev, der, chunk=700):
    """The CA over the console's ca command, in parts; the final reply."""
    reply = None
    for at in range(0, len(der), chunk):
        reply = dev.request({"cmd": "ca", "size": len(der), "at": at,
                             "data": base64.b64encode(der[at:at + chunk]).decode()})
        assert reply["ok"], reply
    return reply


class FakeBroker:
    """A TLS server that records every handshake and every byte a client sends after it."""

    def __init__(self, certfile, keyfile):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes = []          # "ok" or the server-side error
        self.received = b""
        self.raw = b""                # what arrived before the handshake (client hello)
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as e:
                with self.lock:
                    self.handshakes.append(str(e))
                conn.close()
                continue
            with self.lock:
                self.handshakes.append("ok")
            try:
                while data := tls.recv(4096):
                    with self.lock:
                        self.received += data
            except (OSError, ssl.SSLError):
                pass
            tls.close()

    def close(self):
        self.sock.close()


def tls_config(name, port, meter_port, **broker):
    cfg = device_config(name, port, meter_port)
    cfg["broker"].update({"host": "localhost", "tls": True}, **broker)
    cfg["mqtt"].update(username=name, password=PASSWORD)
    return cfg


@pytest.mark.parametrize("server_ca,hosts", [("other", ("localhost",)), ("right", ("broker.example",))],
                         ids=["certificate-from-another-ca", "certificate-for-another-host"])
def test_device_refuses_a_broker_it_cannot_verify(tmp_path, device_factory, meter, server_ca, hosts):
    community_ca, other_ca = CA("community CA"), CA("someone else's CA")
    signer = other_ca if server_ca == "other" else community_ca
    certfile, keyfile = signer.server(tmp_path, hosts=hosts, ips=())
    fake = FakeBroker(certfile, keyfile)
    try:
        dev = device_factory(device_config("tls-1", free_port(), meter.port), name="tls-1", heapsize=TLS_HEAP)
        stored = send_ca(dev, community_ca.der)
        assert stored["size"] == len(community_ca.der)
        reply = dev.request({"cmd": "provision", "broker": {"host": "localhost", "port": fake.port,
                                                            "tls": True, "ca": stored["ca"]},
                             "mqtt": {"username": "tls-1", "password": PASSWORD}})
        assert reply["ok"], reply
        dev.request({"cmd": "reboot"})
        wait_for(lambda: len(fake.handshakes) >= 2, what="the device to try the fake broker twice")
        st = wait_status(dev, lambda s: "TLS" in (s.get("mqtt_error") or ""), "a TLS error in the status")
        assert st["connected"] is False
        with fake.lock:
            assert "ok" not in fake.handshakes, fake.handshakes
            assert PASSWORD.encode() not in fake.received and fake.received == b""
        assert dev.alive, "a refused certificate is a connection error, not a crash"
        assert dev.reboots == 1, "only the reboot the test asked for"
    finally:
        fake.close()


def test_tls_without_a_ca_is_refused_unless_insecure(tmp_path, device_factory, meter):
    dev = device_factory(device_config("tls-2", free_port(), meter.port), name="tls-2", heapsize=TLS_HEAP)
    reply = dev.request({"cmd": "provision", "broker": {"tls": True}})
    assert reply["ok"] is False and "broker.tls needs broker.ca" in reply["error"], reply
    reply = dev.request({"cmd": "provision", "broker": {"tls": True, "ca": "/nonexistent/ca.der"}})
    assert reply["ok"] is False and "broker.ca" in reply["error"], reply
    assert dev.request({"cmd": "status"})["config"]["broker"]["tls"] is False, "nothing changed"
    bad = dev.request({"cmd": "ca", "size": 5, "at": 0, "data": base64.b64encode(b"hello").decode()})
    assert bad["ok"] is False and "not a DER certificate" in bad["error"]
    out_of_order = dev.request({"cmd": "ca", "size": 900, "at": 100, "data": "AAAA"})
    assert out_of_order["ok"] is False and "expected at=0" in out_of_order["error"]
    assert dev.request({"cmd": "provision", "broker": {"tls": True, "insecure": True}})["ok"]


def test_device_connects_to_mosquitto_over_tls_with_the_right_ca(tmp_path, device_factory, meter):
    ca = CA("community CA")
    certfile, keyfile = ca.server(tmp_path, hosts=("localhost",), ips=())
    port, tls_port = free_port(), free_port()
    conf = (f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {tls_port} 127.0.0.1\ncertfile {certfile}\nkeyfile {keyfile}\n"
            "tls_version tlsv1.2\n")
    with Mosquitto(tmp_path / "mosq", port=port, config_text=conf):
        wait_port(tls_port)
        sub = Subscriber(port)
        try:
            dev = device_factory(device_config("tls-3", free_port(), meter.port), name="tls-3", heapsize=TLS_HEAP)
            stored = send_ca(dev, ca.der)
            reply = dev.request({"cmd": "provision", "broker": {"host": "localhost", "port": tls_port,
                                                                "tls": True, "ca": stored["ca"]}})
            assert reply["ok"], reply
            dev.request({"cmd": "reboot"})
            wait_for(lambda: len(sub.seqs("tls-3")) >= 2, what="readings over TLS")
            st = wait_status(dev, lambda s: s.get("connected"), "connected over TLS")
            assert st["config"]["broker"]["ca"] == stored["ca"]
            # a new CA replaces the old file only when a provision names it
            other = send_ca(dev, CA("next CA").der)
            assert (dev.state_dir / stored["ca"].rsplit("/", 1)[1]).exists()
            assert dev.request({"cmd": "provision", "broker": {"ca": other["ca"]}})["ok"]
            assert not (dev.state_dir / stored["ca"].rsplit("/", 1)[1]).exists()
        finally:
            sub.close()


def test_forged_ack_above_what_was_sent_deletes_nothing(tmp_path, device_factory, meter, mosquitto):
    """Records pile up while the broker is away; on the connection that follows, an ack
    for far more than the device has sent on it (a retained one here, delivered before the
    replay gets far) is ignored: every record still reaches the gateway."""
    dev = device_factory(device_config("forge-1", free_port(), meter.port, interval_s=0.05),
                         name="forge-1")
    wait_status(dev, lambda s: s["counters"]["log_depth"] >= 40, "a backlog of 40 readings")
    forger = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="forger")
    forger.connect("127.0.0.1", mosquitto.port)
    forger.loop_start()
    forger.publish(f"egs/v1/{COMMUNITY}/forge-1/ack", json.dumps({"seq": 10**6}), qos=1,
                   retain=True).wait_for_publish(5)
    forger.loop_stop()
    forger.disconnect()
    sub = Subscriber(mosquitto.port, ack=False)
    try:
        dev.kill()
        cfg = json.loads((dev.state_dir / "config.json").read_text())
        cfg["broker"]["port"] = mosquitto.port
        cfg["interval_s"] = 3600
        (dev.state_dir / "config.json").write_text(json.dumps(cfg))
        dev.start()
        st = wait_status(dev, lambda s: s.get("connected") and (
            s["counters"]["bad_messages"] >= 1 or s["acked"] > 0), "the forged ack to arrive")
        assert st["acked"] == 0 and st["counters"]["log_depth"] >= 40, st
        wait_for(lambda: len(sub.seqs("forge-1")) >= 40, what="the whole backlog published")
        assert sub.seqs("forge-1")[:40] == list(range(1, 41))
        assert "ignored bad ack message" in dev.log_text()
    finally:
        sub.close()
