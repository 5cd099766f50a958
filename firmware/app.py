"""The device application: read the meter on the clock, sign, log, publish, obey the gateway.

One cooperative loop (no threads: MicroPython on the ESP32 has little heap and a watchdog),
each pass short: feed the watchdog, answer the console, take a reading when one is due,
keep the MQTT link up, and hand the flash log's backlog to MQTT a few records at a time.

A reading (cycle):
1. read import and export energy over Modbus (firmware/meters.py: exact integer Wh);
   the meter serial first when not known yet or after a failed reading (a swapped meter);
2. a Modbus error, or a value that must not be signed (NaN, infinity, "not available",
   negative, a cumulative register lower than the last signed one) is a meter fault:
   counted by kind, reported in the status, and nothing is signed;
3. otherwise claim the next sequence number (firmware/sequence.py), build and sign the OCMF
   record (protocol/ocmf.py, protocol/p256.py), append it to the flash log (flushed);
4. only then may it leave: the backlog pump publishes every record above what the gateway
   has acknowledged, oldest first, QoS 1, at most `max_inflight` at a time.
A record is deleted from flash only after the gateway's `.../ack`, never on PUBACK, and
only for sequences this connection has published (an ack above them is ignored).

Schedule: readings at multiples of interval_s since the epoch and at every quarter hour
(the settlement interval), whichever comes first; interval_s may be fractional for tests.
"""
import gc
import json

from firmware import meters, modbus
from firmware.flashlog import FlashLog
from firmware.heap import unload
from firmware.mqtt import Backoff, Client, MQTTError
from firmware.sequence import Sequence
from firmware.version import FW_VERSION
from protocol import messages, ocmf, p256

GATEWAY_ID = "EGS-ESP32-MP"
QUARTER_MS = 900000
MAX_INFLIGHT = 8
ERROR_KINDS = {"timeouts": "timeout", "crc_errors": "crc", "frame_errors": "frame",
               "exceptions": "exception", "link_errors": "link"}


def next_due(now_ms, interval_ms):
    """The next reading time after now_ms: a multiple of interval_ms or a quarter hour."""
    a = (now_ms // interval_ms + 1) * interval_ms
    b = (now_ms // QUARTER_MS + 1) * QUARTER_MS
    return min(b, a)


def record_field(body, key):
    """A string field of an OCMF payload we wrote ourselves (e.g. "MS"), or None."""
    marker = b'"' + key.encode() + b'":"'
    i = body.find(marker)
    if i < 0:
        return None
    i += len(marker)
    j = body.find(b'"', i)
    return body[i:j].decode() if j > i else ""


class App:
    def __init__(self, hal, cfg, secret):
        self.hal = hal
        self.cfg = cfg
        self.secret = secret
        self.pubkey = p256.public_key(secret)
        self.pubkey_hex = "".join("%02x" % b for b in self.pubkey)
        self.model = cfg["meter"]["model"]
        self.table = meters.get_model(self.model)
        self.unit = cfg["meter"]["unit"]
        self.log = FlashLog(hal.log_dir, cfg["log"]["max_bytes"], cfg["log"]["segments"])
        self.seq = Sequence(self.log, hal)
        self.interval_ms = max(1, int(cfg["interval_s"] * 1000))
        self.status_ms = int(cfg["status_interval_s"] * 1000)
        self.master = None
        self.meter_serial = None
        self.serial_of_last = None
        if self.log.last_seq is not None:
            last = self._last_body()
            if last is not None:
                self.serial_of_last = record_field(last, "MS")
        self.counters = {"meter_faults": 0, "reconnects": 0, "readings": 0,
                         "bad_messages": 0, "log_errors": 0}
        self.faults = {}
        self.meter_fault = None
        self.last_reading = None
        self.modbus_errors_base = 0
        from protocol import topics  # unloaded after boot (firmware/main.py)

        dev, com = cfg["device_id"], cfg["community"]
        self.t_ocmf = topics.topic(com, dev, "ocmf")
        self.t_status = topics.topic(com, dev, "status")
        self.t_ack = topics.topic(com, dev, "ack")
        self.t_cmd = topics.topic(com, dev, "cmd")
        topics = None
        m = cfg["mqtt"]
        b = cfg["broker"]
        self.mqtt = Client(
            dev, lambda: hal.connect_tcp(b["host"], b["port"], b["tls"], b["ca"], b["insecure"]),
            user=m["username"] or None, password=m["password"] or None,
            keepalive_s=m["keepalive_s"], will=(self.t_status, messages.OFFLINE, True),
            on_message=self._on_message, max_inflight=MAX_INFLIGHT,
            timeout_ms=max(2000, min(15000, m["keepalive_s"] * 1000)))
        self.backoff = Backoff(500, int(m["backoff_max_s"] * 1000))
        self.connected_once = False
        self.sent = self.log.acked            # highest sequence handed to MQTT this session
        self.published = 0                    # highest sequence published since the CONNACK
        self.status_dirty = True
        self.status_due = hal.ticks_ms()
        self.due = next_due(hal.time_ms(), self.interval_ms)
        self.reboot_requested = False
        self.stopped = False
        self.heap_free = self.heap_min_free = None
        self.ack_timeout_ms = int(cfg["ack_timeout_s"] * 1000)
        self.trial_ms = int(cfg["ota_trial_s"] * 1000)
        self.ack_progress = hal.ticks_ms()   # when the gateway's ack last moved
        self.started_ms = hal.ticks_ms()
        self.ota_status = None           # OTA: see _ota()
        self.ota_job = None

    def _last_body(self):
        # the newest record, for the meter serial it was signed with; acknowledged or not
        # (usually it is, and without its serial the decrease check would skip a reboot)
        rec = self.log.newest()
        return rec[1] if rec else None

    # ------------------------------------------------------------------ reading
    def _meter(self):
        if self.master is None:
            mc = self.cfg["meter"]
            uart = self.hal.open_meter(mc)
            self.master = modbus.Master(uart, timeout_ms=mc["timeout_ms"], retries=mc["retries"])
        return self.master

    def _fault(self, kind, detail):
        self.counters["meter_faults"] += 1
        self.faults[kind] = self.faults.get(kind, 0) + 1
        changed = self.meter_fault is None or self.meter_fault["kind"] != kind
        self.meter_fault = {"kind": kind, "detail": detail}
        self.meter_serial = None if kind in ERROR_KINDS.values() else self.meter_serial
        self.status_dirty = True
        if changed:
            self.hal.log("meter fault %s: %s" % (kind, detail))

    def _read_serial(self, master):
        serial = meters.read_serial(master, self.table, self.unit)
        self.meter_serial = serial if serial is not None else self.cfg["meter"]["serial"]

    def probe_meter(self):
        """Read the meter serial before the birth message, so it can carry it."""
        try:
            self._read_serial(self._meter())
        except (OSError, modbus.ModbusError) as e:
            self.hal.log("meter serial not read: %s" % (e,))

    def read_meter(self):
        """(import_wh, export_wh, serial) or None after recording a meter fault."""
        try:
            master = self._meter()
        except OSError as e:
            self._fault("link", "cannot open meter port: %s" % (e,))
            return None
        try:
            if self.meter_serial is None:
                self._read_serial(master)
            imp, exp = meters.read_energy(master, self.table, self.unit)
        except modbus.ModbusError as e:
            self._fault(ERROR_KINDS.get(e.counter, "modbus"), str(e))
            return None
        except meters.MeterFault as e:
            self._fault(e.reason, str(e))
            return None
        if self.meter_serial != self.serial_of_last:
            prev = None          # another meter: its registers start a new baseline
        else:
            prev = self.log.last_regs
        try:
            meters.check_progress(prev, (imp, exp))
        except meters.MeterFault as e:
            self._fault(e.reason, "%s (last signed %s, now %s)" % (e, prev, (imp, exp)))
            return None
        return imp, exp, self.meter_serial

    def cycle(self, now_ms=None):
        """One reading: True when a record was signed and logged."""
        got = self.read_meter()
        if got is None:
            return False
        imp, exp, serial = got
        if now_ms is None:
            now_ms = self.hal.time_ms()
        seq = self.seq.claim()
        record = ocmf.build(
            self.secret, seq, imp, exp, now_ms // 1000,
            gi=GATEWAY_ID, gs=self.cfg["device_id"], gv=FW_VERSION,
            mv=self.table["vendor"], mm=self.table["model"], ms=serial,
            time_status="S" if self.hal.time_synced() else "U")
        try:
            self.log.append(seq, imp, exp, record)
        except OSError as e:
            self.counters["log_errors"] += 1
            self.hal.log("flash log append failed: %r" % (e,))
            return False
        self.seq.used(seq)
        if self.ota_status is not None and not self.ota_status["confirmed"]:
            self._ota_confirm()          # OTA: the first signed reading confirms a new version
        self.serial_of_last = serial
        self.counters["readings"] += 1
        self.last_reading = (seq, imp, exp)
        if self.meter_fault is not None:
            self.meter_fault = None
            self.status_dirty = True
        return True

    # ------------------------------------------------------------------ status
    def modbus_errors(self):
        return self.master.errors() if self.master is not None else 0

    def status(self, state="online"):
        c = self.counters
        mc = self.mqtt.counters
        return {
            "state": state, "fw": FW_VERSION, "model": self.model,
            "meter_serial": self.meter_serial if self.meter_serial is not None
            else self.serial_of_last,
            "pubkey": self.pubkey_hex,
            "counters": {"modbus_errors": self.modbus_errors(), "reconnects": c["reconnects"],
                         "log_depth": self.log.depth(), "meter_faults": c["meter_faults"],
                         "dropped": self.log.dropped, "readings": c["readings"],
                         "bad_messages": c["bad_messages"] + mc["bad_packets"]
                         + mc["oversize"] + mc["handler_errors"],
                         "torn_records": self.log.torn,
                         "log_errors": c["log_errors"]},
            "faults": self.faults, "meter_fault": self.meter_fault,
            "seq": self.log.last_seq or 0, "acked": self.log.acked,
            "oldest": self.log.oldest_live(),     # below it nothing can be resent (dropped)
            "interval_s": self.interval_ms / 1000,
            "heap": {"free": self.heap_free, "min_free": self.heap_min_free},
            "ota": self.ota_status or {},
        }

    # ------------------------------------------------------------------ messages
    def _on_message(self, topic, payload, retained=False):
        if retained and topic == self.t_cmd:
            # a command kept by the broker is stale (and a "reboot" kept there would
            # reboot the device on every connect): commands count only when sent now
            self._bad("retained cmd", "stale", payload)
            return
        try:
            if topic == self.t_ack:
                seq = messages.parse_ack(payload)
                if seq > self.published:
                    # nobody can have stored what this connection has not carried: a forged
                    # or stale ack must not make the flash log forget unsent records
                    self._bad("ack", "seq %d above %d, the highest sent in this connection"
                              % (seq, self.published), payload)
                    return
                if self.log.ack(seq):
                    self.ack_progress = self.hal.ticks_ms()
                    self.status_dirty = self.status_dirty or self.log.depth() == 0
                self.sent = max(self.sent, self.log.acked)
            elif topic == self.t_cmd:
                self.command(messages.parse_cmd(payload))
        except messages.MessageError as e:
            self._bad("ack" if topic == self.t_ack else "cmd", e, payload)

    def _bad(self, what, why, payload):
        self.counters["bad_messages"] += 1
        self.hal.log("ignored bad %s message (%s): %r" % (what, why, bytes(payload[:80])))

    def command(self, msg):
        """A command object checked by protocol.messages.parse_cmd."""
        cmd = msg["cmd"]
        if cmd == "resend":
            self.sent = min(self.sent, msg["from"] - 1)
        elif cmd == "set_interval":
            self.set_interval(msg["interval_s"])
        elif cmd == "reboot":
            self.reboot_requested = True
        elif cmd == "update":            # OTA: carried out by step(), not in the callback
            self.ota_job = msg
            self.status_dirty = True

    def set_interval(self, seconds):
        from firmware import config

        self.cfg["interval_s"] = seconds
        self.interval_ms = max(1, int(seconds * 1000))
        self.due = next_due(self.hal.time_ms(), self.interval_ms)
        try:
            config.save(self.hal.config_path, self.cfg)
        except OSError as e:
            self.hal.log("cannot save config: %r" % (e,))
        config = None
        unload()
        self.status_dirty = True

    # ------------------------------------------------------------------ network
    def network(self):
        c = self.mqtt
        now = self.hal.ticks_ms()
        if not c.connected:
            if not self.backoff.ready(now):
                return
            if not self.connected_once and self.meter_serial is None:
                self.probe_meter()
            try:
                self.hal.network_up(self.cfg)
                self.hal.feed_watchdog()     # Wi-Fi and NTP may have taken a while
                c.connect()
                c.subscribe(self.t_ack, 1)
                c.subscribe(self.t_cmd, 1)
            except (OSError, MQTTError) as e:
                c.close(e)
                delay = self.backoff.failed(now)
                self.hal.log("mqtt connect failed (%s); next try in %d ms" % (c.last_error, delay))
                return
            self.backoff.reset()
            if self.connected_once:
                self.counters["reconnects"] += 1
            self.connected_once = True
            self.sent = self.log.acked        # replay everything not acknowledged
            self.published = self.log.acked   # acks above what this connection sent: ignored
            self.ack_progress = now
            self.status_dirty = True
            self.hal.log("mqtt connected to %s:%d" % (self.cfg["broker"]["host"],
                                                     self.cfg["broker"]["port"]))
        c.poll()
        try:
            # the status waits for a free slot: publishing into a full window raises,
            # which would drop the link in the middle of a backlog replay
            if c.connected and c.can_publish() and (
                    self.status_dirty or self.hal.ticks_diff(now, self.status_due) >= 0):
                c.publish(self.t_status, json.dumps(self.status()), 1, True)
                self.status_dirty = False
                self.status_due = self.hal.ticks_add(now, self.status_ms)
            if self.sent > self.log.acked and not c.inflight and \
                    self.hal.ticks_diff(now, self.ack_progress) > self.ack_timeout_ms:
                # everything went out and was PUBACKed, yet the gateway has not confirmed
                # it (it lost messages, or restarted): send the unconfirmed part again
                self.hal.log("no ack above %d for %d ms: resending"
                             % (self.log.acked, self.ack_timeout_ms))
                self.sent = self.log.acked
                self.ack_progress = now
            while c.connected and c.can_publish():
                rec = self.log.next_after(self.sent)
                if rec is None:
                    break
                if self.sent <= self.log.acked:
                    self.ack_progress = now       # the first record awaiting an ack
                c.publish(self.t_ocmf, rec[1], 1, False)
                self.sent = rec[0]
                self.published = max(self.published, rec[0])
        except (OSError, MQTTError) as e:
            c.close(e)
        if not c.connected:
            self.hal.log("mqtt connection lost: %s" % c.last_error)
            self.backoff.failed(now)

    def shutdown(self, reason):
        """Before a reboot: say so on the status topic and leave cleanly."""
        c = self.mqtt
        if c.connected:
            try:
                st = self.status("offline")
                st["reason"] = reason
                c.publish(self.t_status, json.dumps(st), 1, True)
                c.poll()
            except (OSError, MQTTError):
                pass
            c.disconnect()

    # ------------------------------------------------------------------ loop
    def step(self):
        """One pass of the main loop; returns how long the loop may sleep (ms)."""
        hal = self.hal
        now = hal.time_ms()
        if now >= self.due:
            try:
                self.cycle(now)
            except Exception as e:  # noqa: BLE001 - one bad cycle must not stop the device
                self.counters["log_errors"] += 1
                hal.log("reading cycle failed: %r" % (e,))
            self.due = next_due(hal.time_ms(), self.interval_ms)
            gc.collect()            # once per reading: short pauses, less fragmentation
            free = gc.mem_free()
            self.heap_free = free
            if self.heap_min_free is None or free < self.heap_min_free:
                self.heap_min_free = free
        if self.ota_status is None:
            self._ota()             # before the first status: it says whether this is a trial
        self.network()
        trial = self.ota_status
        if self.ota_job is not None:
            self._ota()
        elif trial is not None and not trial["confirmed"] and trial["state"] != "rolling back" \
                and hal.ticks_diff(hal.ticks_ms(), self.started_ms) > self.trial_ms:
            # A new version on trial that runs but has not signed a reading (its meter
            # code is broken, say) would otherwise stay until the next power cut: reboot,
            # and boot_select, finding the trial used up, starts the old version.
            hal.log("version %s not confirmed within %d s: rebooting to roll back"
                    % (FW_VERSION, self.trial_ms // 1000))
            trial["state"] = "rolling back"
            self.reboot_requested = True
        wait = self.due - hal.time_ms()
        return 0 if wait < 0 else (min(wait, 50))

    # ------------------------------------------------------------------ OTA
    # The update code (firmware/ota.py, protocol/offer.py, protocol/bundle.py) is imported
    # only while an update runs, and the slot bookkeeping (firmware/boot_select.py) only
    # for a moment: the heap has no room to keep them loaded.
    def _ota(self):
        root = getattr(self.hal, "state_dir", "")
        if self.ota_status is None:
            from firmware import boot_select

            self.ota_status = boot_select.status(root)
            unload("firmware.boot_select")
            self.status_dirty = True
        msg, self.ota_job = self.ota_job, None
        if msg is None:
            return
        before = self.ota_status["state"]
        self.ota_status["state"] = "downloading"
        self.status_dirty = True
        self.network()
        from firmware import ota

        ota.run(self.hal, FW_VERSION, msg, self.ota_status,
                before_reset=lambda: self.shutdown("update"))
        if self.ota_status["state"] == "downloading":
            self.ota_status["state"] = before    # an offer of the running version: no-op
        unload("firmware.ota", "protocol.offer", "protocol.bundle", "firmware.boot_select")
        self.status_dirty = True

    def _ota_confirm(self):
        from firmware import boot_select

        if boot_select.confirm(getattr(self.hal, "state_dir", "")):
            self.hal.log("version %s confirmed" % FW_VERSION)
            if self.hal.name == "esp32":
                from firmware.hal import esp32_ota

                esp32_ota.confirm()
        st = self.ota_status or {}
        st["confirmed"] = True
        st["state"] = "confirmed"
        self.ota_status = st
        unload("firmware.boot_select")
        self.status_dirty = True
