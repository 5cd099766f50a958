"""Verification pipeline for signed readings arriving over MQTT.

A batch of messages is committed in one transaction; only then is each device sent
`…/ack {"seq": n}`, n the highest sequence up to which everything is durably stored, so a
device never deletes a record the gateway could still lose. Every rejection is kept in
quarantine with its reason (REASONS) and logged as a security event, both bounded per
device and in total (gateway/ingest/store.py). A device's retained status is written at
most `status_burst` times at once and then once per `status_interval_s`; the latest one
held back is written when the device may again (`flush_status`).

`IngestCore` is the synchronous, testable core (store decisions; the checks a message
passes are listed there); the signature check is in gateway/ingest/verify.py, and
gateway/ingest/mqtt.py feeds the core from MQTT and publishes what it returns.
"""
import json
import logging
import sqlite3

from gateway import clock as domain_clock
from gateway.db import transaction
from gateway.ingest import intervals, plausibility, store
from gateway.ingest.verify import fast_parse, general_parse, verify_batch
from protocol import topics

TRUSTED_TIME = ("S", "I")

# Rejection reasons (quarantine.reason and security_events.kind).
REASONS = {
    "bad_topic": "topic is not egs/v1/<community>/<device>/ocmf of this community",
    "oversize": "message larger than ingest.max_record_bytes",
    "unknown_device": "no device registered under this id",
    "revoked_device": "device is revoked",
    "malformed": "not a well-formed OCMF fiscal reading",
    "bad_algorithm": "signature algorithm other than ECDSA-secp256r1-SHA256",
    "bad_signature": "signature does not verify with the registered public key",
    "meter_serial_mismatch": "meter serial is not the one registered for the device",
    "sequence_reused": "sequence number already stored with different content",
    "replayed_sequence": "sequence number below the device's stored baseline",
    "register_decreased": "cumulative register lower than an earlier reading of the same meter",
    "implausible_time": "reading time before ingest.min_time or too far in the future",
    "too_old": "reading time older than ingest.max_age_s",
    "before_registration": "reading time before the device's registration (less ingest.registration_skew_s)",
    "implausible_energy": "registers rose faster than the meter's maximum power allows: held for review",
    "internal_error": "the gateway failed to store this message (a defect: see its log)",
}

log = logging.getLogger("egs.gateway.ingest.core")

# ---- the core ----------------------------------------------------------------

class Message:
    """One received message on its way through the pipeline."""

    __slots__ = ("device", "payload", "received_at", "reject", "topic")

    def __init__(self, topic, payload, received_at=None):
        self.topic = str(topic)
        self.payload = bytes(payload) if payload is not None else b""
        self.device = None       # device id once the topic is parsed
        self.reject = None       # (reason, detail) decided before verification
        self.received_at = received_at or domain_clock.now()


class Outcome:
    """What a committed batch asks the service to publish."""

    def __init__(self):
        self.acks = {}       # device -> highest contiguous stored sequence
        self.resend = {}     # device -> first missing sequence
        self.accepted = 0
        self.duplicates = 0
        self.rejected = {}   # reason -> count

    def reject(self, reason):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def merge(self, other):
        """Add a later Outcome of the same service round (its acks are the newer)."""
        self.acks.update(other.acks)
        self.resend.update(other.resend)
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        for reason, n in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n


class _Device:
    __slots__ = (
        "acked_seq",
        "epochs",
        "first_seq",
        "id",
        "last_regs",
        "last_seq",
        "pub",
        "registered_at",
        "revoked",
    )

    def __init__(self, row, epochs):
        self.id = row["id"]
        self.pub = bytes.fromhex(row["pubkey"])
        self.revoked = bool(row["revoked"])
        self.epochs = epochs                   # meter serial -> epoch
        self.first_seq = row["first_seq"] if row["first_seq"] is not None else 1
        self.last_seq = row["last_seq"]
        self.acked_seq = row["acked_seq"] if row["acked_seq"] is not None else self.first_seq - 1
        self.last_regs = None                  # (import, export, epoch) at last_seq
        self.registered_at = row["created_at"]


def _topic_parts(topic):
    return topics.parse(topic)


class IngestCore:
    """Decides and stores; keeps a cache of each device's sequence state.

    Single writer: only one ingest may run against a database (the service).

    A message passes, in order (steps 4 to 7 are numbered in `_accept`):
      1. topic `egs/v1/<community>/<device>/ocmf` of our community, size limit;
      2. known device, not revoked;
      3. OCMF structure, algorithm ECDSA-secp256r1-SHA256, signature verified with
         `cryptography` against the registered public key (the expensive step: it runs
         in `verify_batch`, inline or in a process pool);
      4. sequence (PG "F<n>"): a number already stored is a duplicate — acknowledged
         again, stored once — unless its content differs (a reused sequence: rejected);
         a number below the device's first sequence (default 1) is a replay; a jump
         forward records a gap and asks the device to resend from the first missing
         number (a gap the device cannot fill is given up after `gap_give_up` requests);
      5. meter serial is one registered for the device, never an older meter's after a
         newer one's;
      6. cumulative registers do not decrease against the neighbouring readings, unless
         a meter replacement lies between them (new epoch, new baseline);
      7. plausible time: status "S"/"I" must be after `min_time` and at most
         `max_future_s` ahead, at most `max_age_s` old, and not before the device's
         registration (less `registration_skew_s`); "U" (unknown) and "R" (relative) are
         kept but flagged untrusted and not used for intervals;
      8. plausible energy (gateway/ingest/plausibility.py): registers may not rise faster
         than the meter's maximum power allows; such a reading is held for review.
    """

    def __init__(self, conn, community, cfg=None, clock=domain_clock.now):
        cfg = cfg or {}
        self.conn = conn
        self.community = community
        self.max_bytes = cfg.get("max_record_bytes", 16384)
        self.min_time = cfg.get("min_time", 1577836800)
        self.max_future_s = cfg.get("max_future_s", 300)
        self.resend_cooldown_s = cfg.get("resend_cooldown_s", 10.0)
        self.gap_give_up = cfg.get("gap_give_up", 5)
        self.max_age_s = cfg.get("max_age_s", 30 * 86400)
        self.registration_skew_s = cfg.get("registration_skew_s", 7200)
        # under a simulated clock (EGS_CLOCK: the demo's day in the past) registrations
        # carry wall-clock stamps that readings cannot be compared with
        self.registration_bound = not domain_clock.active()
        self.keep_bytes = cfg.get("quarantine_keep_bytes", 1024)
        self.limits = store.Limits.from_config(cfg)
        self.energy = plausibility.EnergyLimit.from_config(cfg)
        self.status_interval_s = cfg.get("status_interval_s", 10.0)
        self.status_burst = cfg.get("status_burst", 10)
        self._status_tokens = {}   # device -> (tokens, at): the status write quota
        self._status_held = {}     # device -> the latest status not written yet
        self.clock = clock
        self.devices = {}
        self.version = None
        self._resent = {}   # device -> (from, at)
        store.init(conn)
        self.reload()

    # registry ------------------------------------------------------------------
    def reload(self):
        epochs = {}
        for r in self.conn.execute("SELECT device_id, epoch, meter_serial FROM meters"):
            epochs.setdefault(r[0], {})[r[2]] = r[1]
        devices = {}
        for row in self.conn.execute("SELECT * FROM devices"):
            d = _Device(row, epochs.get(row["id"], {}))
            if d.last_seq is not None:
                r = self.conn.execute(
                    "SELECT import_wh, export_wh, meter_epoch FROM readings WHERE device_id=? AND seq=?",
                    (d.id, d.last_seq)).fetchone()
                d.last_regs = tuple(r) if r else None
            devices[d.id] = d
        self.devices = devices
        self.version = store.registry_version(self.conn)

    def refresh_registry(self):
        if store.registry_version(self.conn) != self.version:
            self.reload()

    # stage 1: before verification -------------------------------------------------
    def prepare(self, messages):
        """Resolve devices; returns [(message, pub65)] to verify. Refreshes the registry."""
        self.refresh_registry()
        work = []
        for m in messages:
            try:
                community, device, kind = _topic_parts(m.topic)
            except ValueError as e:
                m.reject = ("bad_topic", str(e))
                continue
            if community != self.community or kind != "ocmf":
                m.reject = ("bad_topic",
                            f"topic {m.topic!r} is not an ocmf topic of community {self.community!r}")
                continue
            m.device = device
            if len(m.payload) > self.max_bytes:
                m.reject = ("oversize", f"{len(m.payload)} bytes > {self.max_bytes}")
                continue
            d = self.devices.get(device)
            if d is None:
                m.reject = ("unknown_device", f"no device {device!r} is registered")
                continue
            if d.revoked:
                m.reject = ("revoked_device", f"device {device} is revoked")
                continue
            work.append((m, d.pub))
        return work

    # stage 2: after verification, one transaction --------------------------------------
    def commit(self, messages, results):
        """Store a batch. `results` maps id(message) -> verify_one result.

        Returns an Outcome; acks in it are only valid because the transaction committed.
        """
        out = Outcome()
        touched = {}
        now = self.clock()
        try:
            with transaction(self.conn):
                for m in messages:
                    if m.reject is not None:
                        self._reject(m, out, *m.reject, seq=None)
                        continue
                    res = results[id(m)]
                    if res[0] != "ok":
                        self._reject(m, out, res[1], res[2], seq=res[3])
                        if res[1] not in ("malformed", "bad_algorithm", "bad_signature"):
                            touched.setdefault(m.device, None)
                        continue
                    self._accept(m, res, out, touched, now)
                for device_id in touched:
                    self._chase_gap(device_id, out, now)
                for device_id, min_time in touched.items():
                    self._finish_device(device_id, min_time, now)
        except sqlite3.OperationalError:
            # the store (locked, disk full, I/O), not a message: everything is replayed later
            log.exception("ingest batch of %d messages rolled back; devices will replay", len(messages))
            self.reload()
            return Outcome()
        except Exception as e:
            # A message this code cannot store would fail its whole batch again on every
            # replay, holding up every device in it: store the batch message by message,
            # and quarantine the one that fails (its device's gap is then chased, and
            # given up after ingest.gap_give_up requests, like a lost record).
            self.reload()
            if len(messages) == 1:
                return self._poisoned(messages[0], e)
            log.exception("ingest batch of %d messages failed; storing them one by one",
                          len(messages))
            out = Outcome()
            for m in messages:
                out.merge(self.commit([m], results))
            return out
        for device_id in touched:
            out.acks[device_id] = self.devices[device_id].acked_seq
        return out

    def _poisoned(self, m, error):
        log.error("cannot store a message from %s: %r", m.device or m.topic, error,
                  exc_info=error)
        out = Outcome()
        try:
            with transaction(self.conn):
                self._reject(m, out, "internal_error", f"{type(error).__name__}: {error}"[:500],
                             seq=None)
        except Exception:  # not even quarantined: the device replays it later
            log.exception("cannot quarantine it either")
            self.reload()
            return Outcome()
        return out

    def _chase_gap(self, device_id, out, now):
        """Ask a device that is sending for its first missing sequence, now and then.

        A device that keeps sending but never fills the gap no longer has those records
        (its flash was wiped: the firmware then skips numbers rather than reuse them).
        After `gap_give_up` requests the gap is recorded as lost (a security event) and
        acknowledgements move past it, or the device's log would stall for ever.
        """
        d = self.devices[device_id]
        if d.last_seq is None or d.acked_seq >= d.last_seq:
            self._resent.pop(device_id, None)
            return
        first = d.acked_seq + 1
        prev = self._resent.get(device_id)
        if prev is not None and prev[0] == first:
            if now - prev[1] < self.resend_cooldown_s:
                return
            attempts = prev[2] + 1
        else:
            attempts = 1
        if self.gap_give_up and attempts > self.gap_give_up:
            self._abandon(d, now)
            self._resent.pop(device_id, None)
            return self._chase_gap(device_id, out, now)
        out.resend[device_id] = first
        self._resent[device_id] = (first, now, attempts)

    def _abandon(self, d, now):
        nxt = self.conn.execute("SELECT MIN(seq) FROM readings WHERE device_id=? AND seq>?",
                                (d.id, d.acked_seq)).fetchone()[0]
        lo, hi = d.acked_seq + 1, nxt - 1
        self.conn.execute(
            "UPDATE sequence_gaps SET filled_at=?, lost=1 WHERE device_id=? AND filled_at IS NULL "
            "AND from_seq<=? AND to_seq>=?", (now, d.id, hi, lo))
        if not self.conn.execute("SELECT 1 FROM sequence_gaps WHERE device_id=? AND lost=1 AND from_seq<=? "
                                 "AND to_seq>=?", (d.id, lo, hi)).fetchone():
            self.conn.execute("INSERT INTO sequence_gaps(device_id, from_seq, to_seq, detected_at, filled_at, "
                              "lost) VALUES(?, ?, ?, ?, ?, 1)", (d.id, lo, hi, now, now))
        detail = (f"sequences {lo}..{hi} never arrived after {self.gap_give_up} resend requests; "
                  "acknowledging past them")
        store.add_event(self.conn, d.id, "readings_lost", detail, limits=self.limits)
        log.warning("device %s: %s", d.id, detail)
        d.acked_seq = self._contiguous(d.id, nxt)

    def _reject(self, m, out, reason, detail, seq, signed=False):
        """Quarantine and log. A `signed` message (its signature verified) is the device's
        own statement and kept whole; of anything else only the first bytes."""
        out.reject(reason)
        qid, new = store.quarantine(self.conn, m.topic, m.payload, reason, detail,
                                    device_id=m.device, seq=seq, at=m.received_at,
                                    keep=None if signed else self.keep_bytes, limits=self.limits)
        if new:
            store.add_event(self.conn, m.device, reason, detail, quarantine_id=qid, at=m.received_at,
                            limits=self.limits)
            log.warning("rejected %s from %s: %s", reason, m.device or m.topic, detail)

    def _stored(self, device_id, seq):
        return self.conn.execute(
            "SELECT raw, import_wh, export_wh, meter_epoch FROM readings WHERE device_id=? AND seq=?",
            (device_id, seq)).fetchone()

    def _neighbours(self, device_id, seq):
        prev = self.conn.execute(
            "SELECT seq, import_wh, export_wh, meter_epoch FROM readings WHERE device_id=? AND seq<? "
            "ORDER BY seq DESC LIMIT 1", (device_id, seq)).fetchone()
        nxt = self.conn.execute(
            "SELECT seq, import_wh, export_wh, meter_epoch FROM readings WHERE device_id=? AND seq>? "
            "ORDER BY seq LIMIT 1", (device_id, seq)).fetchone()
        return prev, nxt

    def _accept(self, m, res, out, touched, now):
        _, seq, imp, exp, t, tstatus, serial = res
        d = self.devices[m.device]
        raw = m.payload.decode("utf-8")
        # 4. sequence: duplicate, reuse, replay from before the device's first number
        top = d.acked_seq if d.last_seq is None else d.last_seq
        if seq <= top:
            row = self._stored(d.id, seq)
            if row is not None:
                touched.setdefault(d.id, None)
                if row[0] == raw or _payload_of(row[0]) == _payload_of(raw):   # same signed statement
                    out.duplicates += 1
                    return
                return self._reject(m, out, "sequence_reused",
                                    f"sequence {seq} is already stored with different content", seq, True)
            if seq <= d.acked_seq and not self._in_lost_gap(d.id, seq):
                touched.setdefault(d.id, None)
                return self._reject(m, out, "replayed_sequence",
                                    f"sequence {seq} is below the device's first sequence {d.first_seq}", seq,
                                    True)
        # 5. meter serial
        epoch = d.epochs.get(serial)
        if epoch is None:
            touched.setdefault(d.id, None)
            return self._reject(m, out, "meter_serial_mismatch",
                                f"meter serial {serial!r} is not registered for {d.id}", seq, True)
        # 6. registers against the neighbours in sequence order
        if seq > top:
            prev = d.last_regs
            nxt = None
        else:
            p, n = self._neighbours(d.id, seq)
            prev = tuple(p[1:]) if p else None
            nxt = tuple(n[1:]) if n else None
        problem = _register_problem(prev, (imp, exp, epoch), nxt)
        if problem:
            touched.setdefault(d.id, None)
            return self._reject(m, out, problem[0], problem[1], seq, True)
        # 7. time
        trusted = tstatus in TRUSTED_TIME
        if trusted and not (self.min_time <= t <= now + self.max_future_s):
            touched.setdefault(d.id, None)
            return self._reject(m, out, "implausible_time",
                                f"reading time {t} with status {tstatus!r} is not plausible", seq, True)
        # 7b. how old; 8. energy (only a synchronised time says how long a meter had)
        if trusted:
            problem = self._time_problem(d, t, now) or self._energy_problem(d, m, seq, top, imp, exp, t,
                                                                            epoch)
            if problem:
                touched.setdefault(d.id, None)
                return self._reject(m, out, problem[0], problem[1], seq, True)
        self.conn.execute(
            "INSERT INTO readings(device_id, seq, meter_epoch, meter_serial, import_wh, export_wh, "
            "time_epoch, time_status, time_trusted, raw, received_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (d.id, seq, epoch, serial, imp, exp, t, tstatus, int(trusted), raw, m.received_at))
        out.accepted += 1
        if prev is not None and epoch > prev[2]:
            store.add_event(self.conn, d.id, "meter_baseline",
                            f"sequence {seq}: first reading of meter {serial} (epoch {epoch})",
                            limits=self.limits)
        if seq > top:
            if seq > top + 1:
                self._gap(d, top + 1, seq - 1, now)
            d.last_seq = seq
            d.last_regs = (imp, exp, epoch)
        if seq == d.acked_seq + 1:
            d.acked_seq = seq if seq == d.last_seq else self._contiguous(d.id, seq)
        if trusted:
            t_min = touched.get(d.id)
            touched[d.id] = t if t_min is None else min(t_min, t)
        else:
            touched.setdefault(d.id, None)

    def _time_problem(self, d, t, now):
        if self.max_age_s and t < now - self.max_age_s:
            return ("too_old", (f"reading time {t} is more than ingest.max_age_s = {self.max_age_s} s "
                                f"before the gateway's clock ({int(now)})"))
        reg, skew = d.registered_at, self.registration_skew_s
        # A registration stamped ahead of the gateway's clock (the clock was stepped back
        # since) bounds nothing: the horizon above still does.
        if self.registration_bound and reg is not None and reg <= now + skew and t < reg - skew:
            return ("before_registration",
                    (f"reading time {t} is before the device's registration at {int(reg)} "
                     f"(less ingest.registration_skew_s = {skew} s)"))
        return None

    def _trusted_reading(self, device_id, epoch, seq, earlier):
        """The nearest reading of the same meter with a synchronised time, by sequence."""
        op, order = ("<", "DESC") if earlier else (">", "ASC")
        return self.conn.execute(
            "SELECT seq, time_epoch, import_wh, export_wh FROM readings WHERE device_id=? AND meter_epoch=? "
            f"AND time_trusted=1 AND seq{op}? ORDER BY seq {order} LIMIT 1", (device_id, epoch, seq)).fetchone()

    def _energy_problem(self, d, m, seq, top, imp, exp, t, epoch):
        """A held reading's (reason, detail), else None (gateway/ingest/plausibility.py)."""
        if not self.energy.enabled:
            return None
        power, source = self.energy.max_power(d.id, plausibility.meter_model(m.payload))
        cur = (seq, t, imp, exp)
        pairs = []
        prev = self._trusted_reading(d.id, epoch, seq, earlier=True)
        if prev is not None:
            pairs.append((tuple(prev), cur))
        if seq < top:
            nxt = self._trusted_reading(d.id, epoch, seq, earlier=False)
            if nxt is not None:
                pairs.append((cur, tuple(nxt)))
        anchor = self.conn.execute(
            "SELECT seq, time_epoch, import_wh, export_wh FROM readings WHERE device_id=? AND meter_epoch=? "
            "AND time_trusted=1 AND seq<? AND time_epoch<=? ORDER BY time_epoch DESC, seq DESC LIMIT 1",
            (d.id, epoch, seq, t - plausibility.WINDOW_S)).fetchone()
        if anchor is not None and (prev is None or anchor[0] != prev[0]):
            pairs.append((tuple(anchor), cur))
        for a, b in pairs:
            detail = self.energy.problem(a, b, power, source)
            if detail:
                return ("implausible_energy", detail)
        return None

    def _in_lost_gap(self, device_id, seq):
        return self.conn.execute("SELECT 1 FROM sequence_gaps WHERE device_id=? AND lost=1 AND from_seq<=? "
                                 "AND to_seq>=?", (device_id, seq, seq)).fetchone() is not None

    def _contiguous(self, device_id, start):
        n = start
        for (s,) in self.conn.execute(
                "SELECT seq FROM readings WHERE device_id=? AND seq>? ORDER BY seq", (device_id, start)):
            if s != n + 1:
                break
            n = s
        return n

    def _gap(self, d, lo, hi, now):
        self.conn.execute(
            "INSERT INTO sequence_gaps(device_id, from_seq, to_seq, detected_at) VALUES(?, ?, ?, ?)",
            (d.id, lo, hi, now))
        log.info("device %s: sequence gap %d..%d", d.id, lo, hi)

    def _finish_device(self, device_id, min_time, now):
        d = self.devices[device_id]
        self.conn.execute("UPDATE devices SET last_seq=?, acked_seq=?, last_seen=? WHERE id=?",
                          (d.last_seq, d.acked_seq, now, device_id))
        self.conn.execute(
            "UPDATE sequence_gaps SET filled_at=? WHERE device_id=? AND filled_at IS NULL AND to_seq<=?",
            (now, device_id, d.acked_seq))
        if min_time is not None:
            intervals.mark_dirty(self.conn, device_id, min_time)

    # status messages -------------------------------------------------------------
    def status(self, topic, payload):
        """Record a device's retained status; returns the device id or None if ignored."""
        try:
            community, device, kind = _topic_parts(topic)
        except ValueError:
            return None
        if community != self.community or kind != "status":
            return None
        d = self.devices.get(device)
        if d is None:
            self.refresh_registry()
            d = self.devices.get(device)
        if d is None:
            log.info("status from unregistered device %s ignored", device)
            return None
        text = bytes(payload or b"")[:4096].decode("utf-8", "replace").strip()
        try:
            body = json.loads(text) if text else {"state": "offline"}
        except (ValueError, RecursionError):   # deep nesting raises RecursionError
            body = {"state": text}
        if not isinstance(body, dict):
            body = {"state": str(body)}
        now = self.clock()
        if not self._status_quota(device, now):
            self._status_held[device] = body      # the latest wins; written by flush_status
            return device
        self._status_held.pop(device, None)
        self._write_status(d, body, now)
        return device

    def _status_quota(self, device, now):
        """Take one status write from the device's quota: `status_burst` at once, refilled
        by one every `status_interval_s`."""
        tokens, at = self._status_tokens.get(device, (self.status_burst, now))
        if self.status_interval_s > 0:
            tokens = min(self.status_burst, tokens + max(0.0, now - at) / self.status_interval_s)
        else:
            tokens = self.status_burst
        if tokens < 1:
            self._status_tokens[device] = (tokens, now)
            return False
        self._status_tokens[device] = (tokens - 1, now)
        return True

    def flush_status(self):
        """Write the statuses held back by the quota whose device may write again; the
        service calls this every few seconds. Returns their device ids."""
        done = []
        now = self.clock()
        for device, body in list(self._status_held.items()):
            d = self.devices.get(device)
            if d is None:
                self._status_held.pop(device)
            elif self._status_quota(device, now):
                self._status_held.pop(device)
                self._write_status(d, body, now)
                done.append(device)
        return done

    def _write_status(self, d, body, now):
        with transaction(self.conn):
            before = store.get_device(self.conn, d.id)["status"] or {}
            store.set_status(self.conn, d.id, body, now)
            pub = body.get("pubkey")
            if isinstance(pub, str) and pub and pub.lower() != d.pub.hex() and pub != before.get("pubkey"):
                store.add_event(self.conn, d.id, "status_pubkey_mismatch",
                                f"device announces public key {pub[:20]}…, not the registered one",
                                limits=self.limits)

    def verify_inline(self, work):
        return {id(m): r for (m, _), r in zip(work, verify_batch([(m.payload, pub) for m, pub in work]))}


def _payload_of(raw):
    f = fast_parse(raw)
    if f is None:
        f = general_parse(raw)
    return f[0]


def _register_problem(prev, cur, nxt):
    """Registers must not decrease within a meter epoch; epochs must not go back."""
    for a, b in ((prev, cur), (cur, nxt)):
        if a is None or b is None:
            continue
        if b[2] < a[2]:
            return ("meter_serial_mismatch",
                    f"a reading of a replaced meter (epoch {b[2]}) after one of epoch {a[2]}")
        if b[2] == a[2] and (b[0] < a[0] or b[1] < a[1]):
            return ("register_decreased",
                    f"import/export {b[0]}/{b[1]} Wh after {a[0]}/{a[1]} Wh of the same meter")
    return None
