"""firmware/mqtt.py under the real MicroPython binary against real mosquitto.

- QoS 1 packet ids wrap from 65535 to 1 (never 0) with several messages in flight, and the
  broker accepts every one (a wrong id makes mosquitto drop the connection);
- an idle client keeps its connection alive with PINGREQ (keepalive 1 s, idle 4 s);
- per-device user name and password: the right ones connect, wrong ones are refused with
  the broker's reason, no crash.
"""
import json
import os
import signal
import subprocess
import textwrap
import time

import paho.mqtt.client as paho

from sim.services import ROOT, Mosquitto, micropython

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from firmware.mqtt import Client, MQTTError
    import socket

    port = int(sys.argv[1])
    mode = sys.argv[2]

    def connect():
        s = socket.socket()
        s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        return s

    user = sys.argv[3] if len(sys.argv) > 3 else None
    password = sys.argv[4] if len(sys.argv) > 4 else None
    c = Client("mp-" + mode, connect, user=user, password=password, keepalive_s=1,
               max_inflight=4, timeout_ms=3000)
    try:
        c.connect()
    except (OSError, MQTTError) as e:
        print(json.dumps({"refused": str(e)}))
        sys.exit(0)
    out = {"pids": []}
    if mode == "wrap":
        c._pid = 65530
        n = 0
        while n < 20:
            c.poll()
            if not c.connected:
                break
            if c.can_publish():
                out["pids"].append(c.publish("t/wrap", b"m%d" % n, 1))
                n += 1
            else:
                c.wait(20)
        start = time.ticks_ms()
        while c.connected and c.inflight and time.ticks_diff(time.ticks_ms(), start) < 5000:
            c.poll()
            c.wait(20)
        out["inflight"] = len(c.inflight)
    elif mode == "idle":
        start = time.ticks_ms()
        while c.connected and time.ticks_diff(time.ticks_ms(), start) < 4000:
            c.poll()
            c.wait(50)
        if c.connected:
            c.publish("t/idle", b"still here", 1)
            for _ in range(50):
                c.poll()
                c.wait(20)
    out["connected"] = c.connected
    out["error"] = c.last_error
    out["connects"] = c.counters["connects"]
    c.disconnect()
    print(json.dumps(out))
""")


def run_mp(tmp_path, *args):
    script = tmp_path / "mqtt_probe.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
    proc = subprocess.run([micropython(), "-X", "heapsize=256K", str(script), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Collector:
    def __init__(self, port, topic, auth=None):
        self.got = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"col-{id(self)}")
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_message = lambda c, u, m: self.got.append(m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_packet_ids_wrap_to_one_and_broker_accepts_all(mosquitto, tmp_path):
    col = Collector(mosquitto.port, "t/wrap")
    try:
        out = run_mp(tmp_path, mosquitto.port, "wrap")
        assert out["pids"] == [65531, 65532, 65533, 65534, 65535] + list(range(1, 16))
        assert out["connected"] and out["connects"] == 1 and out["inflight"] == 0, out
        deadline = time.monotonic() + 10
        while len(col.got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert col.got == [b"m%d" % i for i in range(20)]
    finally:
        col.close()


def test_idle_connection_kept_alive_by_ping(mosquitto, tmp_path):
    col = Collector(mosquitto.port, "t/idle")
    try:
        out = run_mp(tmp_path, mosquitto.port, "idle")
        assert out["connected"], out
        deadline = time.monotonic() + 5
        while not col.got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert col.got == [b"still here"]
    finally:
        col.close()


def test_username_password_accepted_or_refused(tmp_path):
    from sim.services import free_port

    workdir = tmp_path / "secure"
    workdir.mkdir()
    pwfile = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "meter-7", "s3cret"],
                   check=True, capture_output=True)
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {pwfile}\n")
    if os.getuid() == 0:          # mosquitto would drop to a user that cannot read pwfile
        conf += "user root\n"
    with Mosquitto(workdir, port=port, config_text=conf):
        refused = run_mp(tmp_path, port, "idle", "meter-7", "wrong")
        assert "refused" in refused and "not authorized" in refused["refused"], refused
        anonymous = run_mp(tmp_path, port, "idle")
        assert "refused" in anonymous, anonymous
        col = Collector(port, "t/idle", auth=("meter-7", "s3cret"))
        try:
            out = run_mp(tmp_path, port, "idle", "meter-7", "s3cret")
            assert out["connected"] and "refused" not in out, out
        finally:
            col.close()


APP_WINDOW_SCRIPT = textwrap.dedent("""
    import json, sys
    from firmware import config
    from firmware.app import App, MAX_INFLIGHT
    from firmware.hal.unix import Hal

    hal = Hal(sys.argv[2])
    cfg = config.validate({"device_id": "win1", "community": "c1",
                           "broker": {"host": "127.0.0.1", "port": int(sys.argv[1])},
                           "mqtt": {"keepalive_s": 60}})
    app = App(hal, cfg, bytes(range(1, 33)))
    for _ in range(40):                      # connected, birth status PUBACKed
        app.network()
        if app.mqtt.connected and not app.mqtt.inflight and not app.status_dirty:
            break
        app.mqtt.wait(50)
    print(json.dumps({"ready": app.mqtt.connected}))
    sys.stdin.readline()                     # the broker is frozen now: no PUBACK comes
    body = b"OCMF|" + b"x" * 300
    for _ in range(2 * MAX_INFLIGHT):
        seq = app.seq.claim()
        app.log.append(seq, 1000 + seq, 0, body)
        app.seq.used(seq)
    app.network()                            # the backlog fills the window
    full = len(app.mqtt.inflight)
    app.status_dirty = True                  # e.g. a meter fault starts
    app.network()
    print(json.dumps({"full": full, "connected": app.mqtt.connected,
                      "error": app.mqtt.last_error, "dirty": app.status_dirty}))
""")


def test_status_waits_for_a_full_window_instead_of_dropping_the_link(tmp_path):
    """A status change while the backlog fills the in-flight window (broker slow to
    PUBACK) must wait for a free slot, not raise and drop the connection mid-replay."""
    script = tmp_path / "window.py"
    script.write_text(APP_WINDOW_SCRIPT)
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
    (tmp_path / "broker").mkdir()
    with Mosquitto(tmp_path / "broker") as broker:
        proc = subprocess.Popen(
            [micropython(), "-X", "heapsize=256K", str(script), str(broker.port),
             str(tmp_path / "state")], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stopped = False
        try:
            assert json.loads(proc.stdout.readline()) == {"ready": True}, proc.stderr.read()
            os.kill(broker.proc.pid, signal.SIGSTOP)
            stopped = True
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            out = json.loads(line)
        finally:
            if stopped:
                os.kill(broker.proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
    assert out["full"] == 8, out
    assert out["connected"], f"the link was dropped: {out['error']}"
    assert out["dirty"], "the status is still to be sent once a slot frees"
