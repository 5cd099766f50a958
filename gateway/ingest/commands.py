"""The gateway core's `egs-gw` commands: run, device, readings, intervals, events,
status, verify, broker.

Every command takes --config/--db/--json (gateway.cliutil.common_options); people
get rich tables, scripts get JSON objects (shapes in docs/gateway.md). Mistakes
are one line on stderr and exit status 1.
"""
import datetime
import re
import sqlite3
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gateway import config as config_mod
from gateway import db
from gateway.cliutil import OneLineCommand, OneLineGroup, UserError, common_options
from gateway.devices import broker as broker_mod
from gateway.ingest import intervals, store

COMMANDS = []


# One-line usage and database errors for every command here (shared with the other groups).
Command, Group = OneLineCommand, OneLineGroup


def _console():
    return Console(highlight=False, soft_wrap=True)


def _iso(ts):
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kwh(wh):
    if wh is None:
        return ""
    sign = "-" if wh < 0 else ""
    return f"{sign}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


def _ago(ts, now=None):
    if ts is None:
        return "never"
    s = int((now or time.time()) - ts)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


_MAX_TIME = 2 ** 53


def parse_time(value, what="--since"):
    """Epoch seconds from an integer, an ISO date/time (UTC unless given) or a duration ago (15m, 2h, 1d)."""
    text = str(value).strip()
    t = None
    if re.fullmatch(r"\d+", text):
        t = int(text)
    m = re.fullmatch(r"(\d+)\s*([smhd])", text)
    if m:
        t = int(time.time()) - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if t is not None:
        if not -_MAX_TIME <= t <= _MAX_TIME:   # SQLite integers are 64-bit: a traceback otherwise
            raise UserError(f"{what}: {value!r} is out of range")
        return t
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{what}: expected epoch seconds, an ISO date/time or a duration like 2h, "
                        f"got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp())


def _store(app, must_exist=False):
    """The store, schema ensured (commands about existing data never create a database)."""
    path = Path(app.db_path)
    if must_exist and not path.exists():
        raise UserError(f"no gateway database at {path} (set --db or store.db)")
    conn = app.conn()
    row = None
    try:
        row = conn.execute("SELECT version FROM schema_versions WHERE component='gateway'").fetchone()
    except sqlite3.OperationalError:
        pass
    if row is None or row[0] < store.SCHEMA_VERSION:   # never take the write lock just to read
        store.init(conn)
    return conn


def _fingerprint(pub_hex):
    from protocol.ocmf import key_fingerprint
    return key_fingerprint(bytes.fromhex(pub_hex))


def _device_out(d):
    out = {k: v for k, v in d.items() if k != "dirty_since"}
    out["fingerprint"] = _fingerprint(d["pubkey"])
    for k in ("revoked_at", "last_seen", "status_at", "created_at"):
        out[k] = _iso(out.get(k))
    return out


def _read_key(text):
    """A public key given as text, or the path of a file holding it (PEM, hex, DER)."""
    from protocol.ocmf import BadKeyError, load_public_key
    p = Path(text)
    data = text
    try:
        if len(text) < 4096 and p.is_file():
            raw = p.read_bytes()
            data = raw if raw[:1] == b"\x30" else raw.decode("ascii", "replace")
    except OSError:
        pass
    try:
        return load_public_key(data)
    except BadKeyError as e:
        raise UserError(f"--pubkey: {e}") from None


# ---- device ------------------------------------------------------------------------

@click.group("device", cls=Group)
def device():
    """Register, inspect, revoke and provision metering devices."""


@device.command("add")
@common_options
@click.option("--id", "device_id", required=True, help="Device id (its MQTT user name).")
@click.option("--pubkey", required=True, help="Public key: hex SEC1, hex/base64 DER, PEM, or a file.")
@click.option("--meter-serial", required=True, help="Serial number of the meter behind the device.")
@click.option("--account", help="EVM address credited/debited for this device's energy.")
@click.option("--first-seq", type=click.IntRange(0), help="First sequence number the device signs "
              "(default 1, a new device); for a device already in service, its next number.")
def device_add(app, device_id, pubkey, meter_serial, account, first_seq):
    """Register a device with its public key."""
    conn = _store(app)
    d = store.add_device(conn, device_id, _read_key(pubkey), meter_serial, account, first_seq)
    out = _device_out(d)
    app.emit(out, lambda o: _console().print(
        f"registered [bold]{o['id']}[/] meter {o['meter_serial']} key {o['fingerprint']}"))


@device.command("list")
@common_options
def device_list(app):
    """All registered devices."""
    conn = _store(app, must_exist=True)
    devices = [_device_out(d) for d in store.list_devices(conn)]

    def human(data):
        t = Table("id", "meter", "account", "key", "last seq", "acked", "last seen", "state")
        for d in data["devices"]:
            state = "revoked" if d["revoked"] else (d["status"] or {}).get("state", "")
            t.add_row(d["id"], d["meter_serial"], d["account"] or "", d["fingerprint"],
                      str(d["last_seq"] if d["last_seq"] is not None else ""),
                      str(d["acked_seq"] if d["acked_seq"] is not None else ""),
                      d["last_seen"] or "never", state)
        _console().print(t)

    app.emit({"devices": devices}, human)


@device.command("show")
@common_options
@click.option("--id", "device_id", required=True)
def device_show(app, device_id):
    """One device: key, meters, sequence state, open gaps, last status."""
    conn = _store(app, must_exist=True)
    out = _device_out(store.require_device(conn, device_id))
    out["meters"] = [dict(m, registered_at=_iso(m["registered_at"])) for m in store.meters(conn, device_id)]
    out["open_gaps"] = [{"from": g["from_seq"], "to": g["to_seq"], "detected_at": _iso(g["detected_at"])}
                        for g in store.gaps(conn, device_id, open_only=True)]
    out["readings"] = store.count_readings(conn, device_id)

    def human(o):
        c = _console()
        t = Table(show_header=False)
        for k in ("id", "fingerprint", "pubkey", "meter_serial", "account", "revoked", "revoked_reason",
                  "readings", "last_seq", "acked_seq", "last_seen", "created_at"):
            t.add_row(k, "" if o.get(k) is None else str(o[k]))
        t.add_row("status", "" if o["status"] is None else str(o["status"]))
        c.print(t)
        for m in o["meters"]:
            c.print(f"meter epoch {m['epoch']}: {m['meter_serial']} ({m['note']}, {m['registered_at']})")
        for g in o["open_gaps"]:
            c.print(f"[yellow]missing sequence {g['from']}..{g['to']}[/] since {g['detected_at']}")

    app.emit(out, human)


@device.command("revoke")
@common_options
@click.option("--id", "device_id", required=True)
@click.option("--reason", default="", help="Recorded with the security event.")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Broker directory to drop the device's credential from (default: broker.dir).")
def device_revoke(app, device_id, reason, broker_dir):
    """Stop accepting a device's readings and drop its broker credential."""
    conn = _store(app, must_exist=True)
    d = store.revoke_device(conn, device_id, reason)
    bdir = broker_dir or app.config["broker"]["dir"]
    removed = broker_mod.remove_credential(bdir, device_id) if Path(bdir).is_dir() else False
    out = _device_out(d)
    out["broker_credential_removed"] = removed
    out["broker_reloaded"] = broker_mod.reload(bdir) if removed else False
    app.emit(out, lambda o: _console().print(
        f"revoked [bold]{o['id']}[/]" + (f"; credential removed from {bdir}/passwd" if removed else "")
        + ("; mosquitto reloaded" if o["broker_reloaded"] else
           (" (reload mosquitto: SIGHUP)" if removed else ""))))


@device.command("replace-meter")
@common_options
@click.option("--id", "device_id", required=True)
@click.option("--meter-serial", required=True, help="Serial of the new meter.")
@click.option("--note", default="", help="Why (recorded with the meter history).")
def device_replace_meter(app, device_id, meter_serial, note):
    """Register a new meter behind a device: its registers start a new baseline."""
    conn = _store(app, must_exist=True)
    epoch = store.replace_meter(conn, device_id, meter_serial, note)
    out = {"id": device_id, "meter_serial": meter_serial, "epoch": epoch}
    app.emit(out, lambda o: _console().print(
        f"{o['id']}: meter {o['meter_serial']} registered (epoch {o['epoch']})"))


@device.command("provision")
@common_options
@click.option("--port", required=True, help="Serial port of the device (e.g. /dev/ttyUSB0).")
@click.option("--id", "device_id", required=True, help="Device id to give it.")
@click.option("--community", help="Community id (default: gateway.community).")
@click.option("--broker", "broker_addr", help="MQTT broker HOST:PORT the device connects to "
              "(default: mqtt.broker).")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Broker directory holding the credentials (default: broker.dir).")
@click.option("--wifi-ssid", default="", help="Wi-Fi network (ESP32).")
@click.option("--wifi-password", default="", help="Wi-Fi password (ESP32).")
@click.option("--meter-model", default="sdm630", show_default=True)
@click.option("--meter-address", default=1, show_default=True, type=int, help="Modbus unit id.")
@click.option("--meter-baud", default=9600, show_default=True, type=int)
@click.option("--meter-serial", help="Meter serial, when the meter does not report one.")
@click.option("--meter-link", help="Meter connection for the unix port (tty path or tcp:HOST:PORT).")
@click.option("--broker-tls", is_flag=True, help="The device connects with TLS.")
@click.option("--interval", "interval_s", type=float, help="Reading interval in seconds.")
@click.option("--account", help="EVM address for this device's energy.")
@click.option("--baud", default=115200, show_default=True, type=int, help="Console baud rate.")
@click.option("--timeout", default=30.0, show_default=True, type=float, help="Seconds per reply.")
def device_provision(app, port, device_id, community, broker_addr, broker_dir, wifi_ssid, wifi_password,
                     meter_model, meter_address, meter_baud, meter_serial, meter_link, broker_tls,
                     interval_s, account, baud, timeout):
    """Provision a device over its serial console and register it."""
    from gateway.devices import provision

    community = community or app.config["gateway"]["community"]
    if community is config_mod.REQUIRED:
        raise UserError("--community (or gateway.community in the config) is required")
    conn = _store(app)
    result = provision.provision(
        conn, port, device_id, community=community,
        broker=broker_addr or app.config["mqtt"]["broker"],
        broker_dir=broker_dir or app.config["broker"]["dir"],
        wifi_ssid=wifi_ssid, wifi_password=wifi_password, meter_model=meter_model,
        meter_address=meter_address, meter_baud=meter_baud, meter_serial=meter_serial,
        meter_link=meter_link, interval_s=interval_s, account=account, broker_tls=broker_tls, baud=baud,
        timeout=timeout)

    def human(o):
        c = _console()
        c.print("[bold]device label[/]")
        t = Table(show_header=False)
        t.add_row("device", o["id"])
        t.add_row("community", o["community"])
        t.add_row("meter serial", o["meter_serial"])
        t.add_row("key fingerprint", o["fingerprint"])
        c.print(t)
        if not o.get("broker_reloaded"):
            c.print("new broker credential: reload mosquitto (SIGHUP) so the device can connect")

    app.emit(result, human)


COMMANDS.append(device)


# ---- readings, intervals, events ----------------------------------------------------------

def _reading_out(r, with_raw=True):
    out = {
        "device_id": r["device_id"], "seq": r["seq"], "time": _iso(r["time_epoch"]),
        "time_epoch": r["time_epoch"], "time_status": r["time_status"],
        "time_trusted": bool(r["time_trusted"]), "import_wh": r["import_wh"],
        "export_wh": r["export_wh"], "meter_serial": r["meter_serial"], "meter_epoch": r["meter_epoch"],
        "received_at": _iso(r["received_at"]),
    }
    if with_raw:
        out["raw"] = r["raw"]
    return out


@click.command("readings", cls=Command)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--since", help="Reading time from: epoch seconds, ISO date/time (UTC), or 2h/1d ago.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000000))
def readings_cmd(app, device_id, since, limit):
    """Stored readings, newest first (JSON includes the raw signed OCMF record)."""
    conn = _store(app, must_exist=True)
    if device_id is not None:
        store.require_device(conn, device_id)
    t0 = parse_time(since) if since is not None else None
    rows = [_reading_out(r) for r in store.readings(conn, device_id, t0, limit)]

    def human(data):
        t = Table("device", "seq", "time (UTC)", "import kWh", "export kWh", "meter", "flags")
        for r in data["readings"]:
            flags = "" if r["time_trusted"] else f"time {r['time_status']}: not used for intervals"
            t.add_row(r["device_id"], str(r["seq"]), r["time"], _kwh(r["import_wh"]), _kwh(r["export_wh"]),
                      r["meter_serial"], flags)
        _console().print(t)

    app.emit({"readings": rows, "count": len(rows)}, human)


@click.command("intervals", cls=Command)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--limit", default=96, show_default=True, type=click.IntRange(1, 1000000))
def intervals_cmd(app, device_id, limit):
    """15-minute intervals per device, newest first, with adjustments and settlement state."""
    conn = _store(app, must_exist=True)
    if device_id is not None:
        store.require_device(conn, device_id)
    intervals.refresh(conn)
    rows = []
    for r in intervals.list_intervals(conn, device_id, limit):
        r = dict(r)
        r["start_time"], r["end_time"] = _iso(r["start"]), _iso(r["end"])
        r["settled_at"] = _iso(r["settled_at"])
        rows.append(r)

    def human(data):
        t = Table("device", "start (UTC)", "import kWh", "export kWh", "adjust imp/exp", "estimated", "state")
        for r in data["intervals"]:
            adj = "" if not (r["adjust_import_wh"] or r["adjust_export_wh"]) else \
                f"{r['adjust_import_wh']:+d}/{r['adjust_export_wh']:+d} Wh"
            t.add_row(r["device_id"], r["start_time"], _kwh(r["metered_import_wh"]),
                      _kwh(r["metered_export_wh"]), adj, "yes" if r["estimated"] else "",
                      r["state"])
        _console().print(t)

    app.emit({"intervals": rows, "count": len(rows)}, human)


@click.command("events", cls=Command)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000000))
def events_cmd(app, device_id, limit):
    """Security events and quarantined (rejected) messages, newest first."""
    conn = _store(app, must_exist=True)
    ev = [dict(e, at=_iso(e["at"])) for e in store.events(conn, device_id, limit)]
    q = [dict(r, first_at=_iso(r["first_at"]), last_at=_iso(r["last_at"]))
         for r in store.quarantined(conn, device_id, limit)]

    def human(data):
        c = _console()
        t = Table("time (UTC)", "device", "event", "detail", title="security events")
        for e in data["security_events"]:
            t.add_row(e["at"], e["device_id"] or "", e["kind"], e["detail"])
        c.print(t)
        t = Table("last seen", "device", "reason", "count", "seq", "detail", title="quarantine")
        for r in data["quarantine"]:
            t.add_row(r["last_at"], r["device_id"] or "", r["reason"], str(r["count"]),
                      "" if r["seq"] is None else str(r["seq"]), r["detail"][:100])
        c.print(t)

    app.emit({"security_events": ev, "quarantine": q}, human)


COMMANDS.extend([readings_cmd, intervals_cmd, events_cmd])


# ---- status ----------------------------------------------------------------------------

@click.command("status", cls=Command)
@common_options
def status_cmd(app):
    """Service state (broker connection, ingest rate) and per device last seen and backlog."""
    conn = _store(app, must_exist=True)
    now = time.time()
    svc, updated = store.get_state(conn, "service")
    if svc is None:
        service = {"running": False, "connected": False, "heartbeat_at": None}
    else:
        fresh = updated is not None and now - updated <= 3 * svc.get("heartbeat_s", 2) + 1
        service = dict(svc, running=bool(svc.get("running")) and fresh, heartbeat_at=_iso(updated),
                       started_at=_iso(svc.get("started_at")))
        service["connected"] = bool(svc.get("connected")) and service["running"]
    devices = []
    for d in store.list_devices(conn):
        missing = sum(g["to_seq"] - g["from_seq"] + 1 for g in store.gaps(conn, d["id"], open_only=True))
        st = d["status"] or {}
        counters = st.get("counters") if isinstance(st.get("counters"), dict) else {}
        devices.append({
            "id": d["id"], "revoked": d["revoked"], "state": st.get("state"),
            "last_seen": _iso(d["last_seen"]), "last_seen_s": None if d["last_seen"] is None
            else round(now - d["last_seen"], 1),
            "last_seq": d["last_seq"], "acked_seq": d["acked_seq"],
            "unacked_stored": (d["last_seq"] - d["acked_seq"]) if d["last_seq"] is not None
            and d["acked_seq"] is not None else 0,
            "missing": missing, "device_log_depth": counters.get("log_depth"),
        })

    def human(data):
        c = _console()
        s = data["service"]
        if s["running"]:
            conn_txt = "[green]connected[/]" if s["connected"] else "[red]not connected[/]"
            c.print(f"gateway running (pid {s.get('pid')}, since {s.get('started_at')}); broker "
                    f"{s.get('broker')} {conn_txt}; ingest {s.get('rate_1m', 0)} readings/s over the last "
                    f"minute; {s.get('accepted', 0)} stored, {s.get('duplicates', 0)} duplicates, "
                    f"{s.get('rejected', 0)} rejected since start")
        else:
            c.print(f"[red]gateway not running[/] (last heartbeat {s.get('heartbeat_at') or 'never'})")
        t = Table("device", "state", "last seen", "last seq", "acked", "missing", "device backlog")
        for d in data["devices"]:
            state = "revoked" if d["revoked"] else (d["state"] or "")
            t.add_row(d["id"], state, _ago(None if d["last_seen_s"] is None else now - d["last_seen_s"], now),
                      str(d["last_seq"] if d["last_seq"] is not None else ""),
                      str(d["acked_seq"] if d["acked_seq"] is not None else ""), str(d["missing"]),
                      "" if d["device_log_depth"] is None else str(d["device_log_depth"]))
        c.print(t)

    app.emit({"service": service, "devices": devices}, human)


COMMANDS.append(status_cmd)


# ---- verify ----------------------------------------------------------------------------

def _key_for(conn, rec):
    """A registered key for a record: by device id in GS, else by meter serial."""
    if conn is None:
        return None, None
    if rec.gateway_serial:
        d = store.get_device(conn, rec.gateway_serial)
        if d is not None:
            return bytes.fromhex(d["pubkey"]), d["id"]
    if rec.meter_serial:
        row = conn.execute("SELECT d.id, d.pubkey FROM meters m JOIN devices d ON d.id = m.device_id "
                           "WHERE m.meter_serial=?", (rec.meter_serial,)).fetchall()
        if len(row) == 1:
            return bytes.fromhex(row[0][1]), row[0][0]
    return None, None


@click.command("verify", cls=Command)
@common_options
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--pubkey", help="Public key to verify against (default: the registered device's).")
def verify_cmd(app, source, pubkey):
    """Verify OCMF records offline (one per line) and print what they say.

    Exit status 0 only when every record verifies.
    """
    from protocol import ocmf

    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {source}: {e.strerror}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"no records in {'standard input' if source == '-' else source}")
    key = _read_key(pubkey) if pubkey else None
    conn = None
    if key is None and Path(app.db_path).exists():
        conn = db.connect(app.db_path, readonly=True)
    results = []
    for n, line in enumerate(lines, 1):
        r = {"line": n, "verified": False}
        try:
            record = line if line.startswith("OCMF|") else ocmf.decode_ocpp_signed_data(line)
            rec = ocmf.parse(record)
            r.update(sequence=rec.sequence, pagination=rec.pagination, meter_serial=rec.meter_serial,
                     gateway_serial=rec.gateway_serial, time=_iso(rec.time_epoch),
                     time_status=rec.time_status, import_wh=rec.import_wh, export_wh=rec.export_wh)
            k, dev = (key, None) if key is not None else _key_for(conn, rec)
            if k is None:
                r["error"] = "no public key: give --pubkey or register the device"
            else:
                ocmf.verify(rec, k)
                r["verified"] = True
                r["fingerprint"] = ocmf.key_fingerprint(k)
                if dev:
                    r["device_id"] = dev
        except ocmf.OcmfError as e:
            r["error"] = f"{type(e).__name__}: {e}"
        results.append(r)
    ok = sum(r["verified"] for r in results)
    out = {"records": results, "verified": ok, "failed": len(results) - ok,
           "all_verified": ok == len(results)}

    def human(data):
        t = Table("#", "result", "PG", "meter", "time", "import kWh", "export kWh", "detail")
        for r in data["records"]:
            t.add_row(str(r["line"]), "[green]OK[/]" if r["verified"] else "[red]FAIL[/]",
                      r.get("pagination") or "", r.get("meter_serial") or "",
                      f"{r.get('time') or ''} {r.get('time_status') or ''}".strip(),
                      _kwh(r.get("import_wh")), _kwh(r.get("export_wh")),
                      r.get("error") or f"key {r.get('fingerprint')}")
        _console().print(t)
        _console().print(f"{data['verified']} of {len(data['records'])} records verified")

    app.emit(out, human)
    if not out["all_verified"]:
        sys.exit(1)


COMMANDS.append(verify_cmd)


# ---- broker ----------------------------------------------------------------------------

@click.group("broker", cls=Group)
def broker():
    """The mosquitto configuration (per-device credentials and ACL)."""


@broker.command("config")
@common_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory to write (default: broker.dir).")
@click.option("--community", help="Community id (default: gateway.community).")
@click.option("--host", help="Loopback listener address (broker.host).")
@click.option("--port", type=int, help="Loopback listener port (broker.port).")
@click.option("--tls-port", type=int, help="TLS listener port (broker.tls_port; 0 = none).")
@click.option("--tls-host", help="TLS listener address (broker.tls_host).")
@click.option("--certfile", help="TLS server certificate, PEM (broker.certfile).")
@click.option("--keyfile", help="TLS server key, PEM (broker.keyfile).")
@click.option("--cafile", help="CA bundle for the TLS listener (broker.cafile).")
@click.option("--gateway-user", help="The gateway's MQTT user name (broker.gateway_user).")
@click.option("--run-as", default="", help="System user mosquitto runs as (mosquitto 'user'; "
              "default: its own, normally 'mosquitto').")
def broker_config(app, out_dir, community, host, port, tls_port, tls_host, certfile, keyfile, cafile,
                  gateway_user, run_as):
    """Write mosquitto.conf, passwd, acl and device credentials into a directory."""
    b = app.config["broker"]
    community = community or app.config["gateway"]["community"]
    if community is config_mod.REQUIRED:
        raise UserError("--community (or gateway.community in the config) is required")
    conn = _store(app)
    summary = broker_mod.write_config(
        conn, out_dir or b["dir"], community,
        host=host or b["host"], port=port if port is not None else b["port"],
        tls_port=tls_port if tls_port is not None else b["tls_port"], tls_host=tls_host or b["tls_host"],
        certfile=certfile or b["certfile"], keyfile=keyfile or b["keyfile"], cafile=cafile or b["cafile"],
        gateway_user=gateway_user or b["gateway_user"], run_as=run_as)
    summary["reloaded"] = broker_mod.reload(summary["dir"])

    def human(s):
        c = _console()
        c.print(f"wrote {s['config']} (listener {s['listener']}"
                + (f", TLS {s['tls_listener']}" if s["tls_listener"] else "") + ")")
        c.print(f"{len(s['devices'])} device credential(s) + gateway user {s['gateway_user']} in {s['passwd']}")
        c.print("running mosquitto reloaded" if s["reloaded"] else f"start: mosquitto -c {s['config']}")
        c.print(f"gateway: egs-gw run --mqtt-user {s['gateway_user']} --mqtt-password-file "
                f"{s['gateway_password_file']}")

    app.emit(summary, human)


COMMANDS.append(broker)
