"""Over-the-air updates: offer a signed release to devices over MQTT and serve it (the work
of `egs-gw device update`, gateway/devices/commands.py).

    egs-gw device update --release dist/firmware-0.2.0.tar (--device ID ... | --all)
                         [--release-key HEX|FILE] [--timeout 600] [--host ADDR] [--port N]

1. The release is checked first with the release key (protocol/bundle.py); a tampered or
   unsigned file is never offered.
2. A small HTTP server (stdlib, one file, GET with Range) serves it for the length of the
   command, at http://<host>:<port>/firmware-<sha256 prefix>.tar. Devices fetch it in
   chunks (firmware/ota.py); HTTP needs no integrity of its own, the device checks the
   signature and every hash against the key it was installed with.
3. `{"cmd":"update","url":...,"version":...,"size":...}` goes to each device's .../cmd
   (QoS 1), again whenever a device comes back online still on its old version with no
   update under way (e.g. after a power cut during the download). It is built by
   protocol/messages_gateway.py with the device's own checks (protocol/offer.py): an offer
   the device would refuse is not sent.
4. The command follows each device's retained .../status until it runs the new version
   confirmed (first signed reading after the switch), refused it, or rolled it back, and
   prints the outcome per device; exit status 1 if any device failed. A device is offered
   the release only once its status has been seen: one that already runs this version
   (confirmed) is `skipped` with the reason, never reported as updated.

It logs in to the broker as its own user (egs-updater, written by `egs-gw broker config`,
`broker.updater_login`), whose ACL allows reading status and writing cmd only: with the
gateway's user it would drop the running gateway (one connection per user name).
"""
import hashlib
import http.server
import json
import os
import threading
import time
from pathlib import Path

from gateway.cliutil import UserError
from gateway.devices.installer import check_bundle

DONE, FAILED, WAITING, SKIPPED = "updated", "failed", "waiting", "skipped"


class ReleaseServer:
    """Serves one file over HTTP/1.0 with byte ranges, in a background thread."""

    def __init__(self, path, host="0.0.0.0", port=0):
        self.data = Path(path).read_bytes()
        self.name = f"/firmware-{hashlib.sha256(self.data).hexdigest()[:16]}.tar"
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                if self.path != server.name:
                    self.send_error(404)
                    return
                data, status = server.data, 200
                rng = self.headers.get("Range")
                if rng:
                    try:
                        unit, spec = rng.split("=", 1)
                        a, b = spec.split("-", 1)
                        start, end = int(a), min(int(b), len(data) - 1)
                        if unit.strip() != "bytes" or start > end:
                            raise ValueError
                    except ValueError:
                        self.send_error(416)
                        return
                    data, status = data[start:end + 1], 206
                    self.send_response(status)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(server.data)}")
                else:
                    self.send_response(status)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _text(value, default=""):
    """A status field as short printable text (a status message is untrusted input)."""
    if value is None:
        return default
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text[:120])


def outcome(status, version):
    """DONE / FAILED (with reason) / WAITING for one device's status message."""
    if not isinstance(status, dict):
        return WAITING, ""
    ota = status.get("ota") if isinstance(status.get("ota"), dict) else {}
    # only an explicit confirmation counts: a new version on trial reports confirmed false,
    # and until it has signed a reading it may still be rolled back
    if status.get("fw") == version and ota.get("confirmed") is True \
            and status.get("state") == "online":
        return DONE, ""
    if ota.get("rolled_back") == version:
        return FAILED, "new version did not confirm; device rolled back"
    if ota.get("state") == "failed" and ota.get("target") == version:
        return FAILED, _text(ota.get("error"), "refused")
    return WAITING, _text(ota.get("state"))


def before_offer(status, version):
    """(SKIPPED, reason) when a device's first status says the offer would change nothing,
    else None: it already runs `version`, confirmed (a bundle of that version built for
    another port included: the version is what the device compares)."""
    if not isinstance(status, dict):
        return None
    ota = status.get("ota") if isinstance(status.get("ota"), dict) else {}
    if status.get("fw") == version and ota.get("confirmed") is True:
        return SKIPPED, f"already runs version {_text(version)}"
    return None


def update_devices(broker, community, devices, release, pubkey, *, user=None, password=None,
                   http_host="127.0.0.1", bind="0.0.0.0", http_port=0, timeout=600.0,
                   progress=None, resend_s=30.0):
    """Offer `release` to `devices`; {device: {"result":..,"detail":..}} when all are done
    or the timeout passed.

    The devices' retained status messages say how far each one is. The offer goes out only
    once the status subscription is in place (so no status of the update can pass
    unseen), and every `resend_s` a device still waiting is subscribed to again, which
    makes the broker send its retained status anew: a live status missed for any reason
    (a reconnect, a broker restart) costs at most one period, not the whole timeout.
    """
    import paho.mqtt.client as mqtt

    from protocol import messages_gateway, topics

    manifest = check_bundle(release, pubkey)
    version = manifest["version"]
    size = os.path.getsize(release)
    state = {d: {"result": WAITING, "detail": "no status yet", "status": None} for d in devices}
    seen = set()        # devices whose status has been read: only those are offered it
    lock = threading.Condition()
    with ReleaseServer(release, bind, http_port) as srv:
        url = f"http://{http_host}:{srv.port}{srv.name}"
        try:
            cmd = messages_gateway.update(url, version, size)
        except messages_gateway.MessageError as e:
            raise UserError(f"release {release} cannot be offered: {e}") from None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"egs-gw-update-{os.getpid()}")
        if user:
            client.username_pw_set(user, password)
        status_topics = {topics.topic(community, d, "status"): d for d in devices}
        sent = {}
        subscribed = threading.Event()

        def on_connect(c, userdata, flags, reason, props):
            c.subscribe([(t, 1) for t in status_topics])

        def on_subscribe(c, userdata, mid, reasons, props):
            subscribed.set()

        def on_message(c, userdata, msg):
            dev = status_topics.get(msg.topic)
            if dev is None:
                return
            try:
                st = json.loads(msg.payload)
            except (ValueError, RecursionError):     # garbage on the topic: not a status
                st = None
            with lock:
                if state[dev]["result"] != WAITING:
                    return              # settled: a later reboot's "offline" changes nothing
                state[dev]["status"] = st
                first = dev not in seen and dev not in sent
                seen.add(dev)
                result, detail = (first and before_offer(st, version)) or outcome(st, version)
                state[dev]["result"], state[dev]["detail"] = result, detail
                if result == WAITING and isinstance(st, dict) and st.get("state") == "online" \
                        and st.get("fw") != version:
                    ota = st.get("ota") if isinstance(st.get("ota"), dict) else {}
                    idle = ota.get("state") in (None, "idle", "confirmed", "failed")
                    if idle and time.monotonic() - sent.get(dev, -1e9) > 2.0:
                        sent[dev] = 0       # the main loop re-sends now
                lock.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        host, _, port = broker.rpartition(":")
        try:
            client.connect(host or "127.0.0.1", int(port or 1883), keepalive=30)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot connect to the MQTT broker {broker}: {e}") from None
        client.loop_start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                with lock:
                    open_ = [d for d in devices if state[d]["result"] == WAITING]
                    if not open_ or time.monotonic() > deadline:
                        break
                    now = time.monotonic()
                    due = [d for d in open_ if d in seen and now - sent.get(d, -1e9) > resend_s] \
                        if subscribed.is_set() else []
                for d in due:
                    if d in sent:       # not the first offer: read its retained status again
                        client.subscribe(topics.topic(community, d, "status"), 1)
                    client.publish(topics.topic(community, d, "cmd"), cmd, qos=1)
                    sent[d] = time.monotonic()
                    with lock:
                        if state[d]["detail"] == "no status yet" or not state[d]["detail"]:
                            state[d]["detail"] = "offered"
                if progress:
                    progress({d: dict(state[d]) for d in devices})
                with lock:
                    lock.wait(0.5)
        finally:
            client.loop_stop()
            client.disconnect()
    for d in devices:
        if state[d]["result"] == WAITING:
            state[d]["result"] = FAILED
            state[d]["detail"] = "timed out (" + (state[d]["detail"] or "no status") + ")"
        state[d].pop("status", None)
    return {"version": version, "url": url, "devices": state}
