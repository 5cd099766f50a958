"""Ingest's `egs-gw` commands: readings, intervals, events, status, verify.

Every command takes --config/--db/--json (gateway.cliutil.common_options); people
get rich tables, scripts get JSON objects (shapes in docs/gateway.md). Mistakes
are one line on stderr, exit status 1 (2 for a usage mistake).
"""
import sys
import time
from pathlib import Path

import click

from gateway import db
from gateway.cliutil import (
    OneLineCommand,
    UserError,
    ago,
    common_options,
    console,
    iso,
    parse_time,
    read_public_key,
    table,
)
from gateway.ingest import intervals, store
from gateway.units import format_kwh

# ---- readings, intervals, events ----------------------------------------------------------

def _reading_out(r, with_raw=True):
    out = {
        "device_id": r["device_id"], "seq": r["seq"], "time": iso(r["time_epoch"]),
        "time_epoch": r["time_epoch"], "time_status": r["time_status"],
        "time_trusted": bool(r["time_trusted"]), "import_wh": r["import_wh"],
        "export_wh": r["export_wh"], "meter_serial": r["meter_serial"], "meter_epoch": r["meter_epoch"],
        "received_at": iso(r["received_at"]),
        # stamped ahead of the gateway's clock at receipt (accepted up to ingest.max_future_s)
        "future": r["received_at"] is not None and r["time_epoch"] > r["received_at"],
    }
    if with_raw:
        out["raw"] = r["raw"]
    return out


@click.command("readings", cls=OneLineCommand)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--since", help="Reading time from: epoch seconds, ISO date/time (UTC), or 2h/1d ago.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000000))
def readings_cmd(app, device_id, since, limit):
    """Stored readings, newest first (JSON includes the raw signed OCMF record)."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    if device_id is not None:
        store.require_device(conn, device_id)
    t0 = parse_time(since) if since is not None else None
    rows = [_reading_out(r) for r in store.readings(conn, device_id, t0, limit)]

    def human(data):
        t = table("device", "seq", "time (UTC)", "import kWh", "export kWh", "meter", "flags")
        for r in data["readings"]:
            flags = "" if r["time_trusted"] else f"time {r['time_status']}: not used for intervals"
            if r["future"]:
                flags = "; ".join(f for f in ("[yellow]future[/]: ahead of the gateway's clock", flags) if f)
            t.add_row(r["device_id"], str(r["seq"]), r["time"], format_kwh(r["import_wh"]), format_kwh(r["export_wh"]),
                      r["meter_serial"], flags)
        console().print(t)

    app.emit({"readings": rows, "count": len(rows)}, human)


@click.command("intervals", cls=OneLineCommand)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--limit", default=96, show_default=True, type=click.IntRange(1, 1000000))
def intervals_cmd(app, device_id, limit):
    """15-minute intervals per device, newest first, with adjustments and settlement state."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    if device_id is not None:
        store.require_device(conn, device_id)
    intervals.refresh(conn)
    rows = []
    # the quarter-hour still filling (no row yet, nothing stored for it) comes first
    stored = [dict(r, in_progress=False) for r in intervals.list_intervals(conn, device_id, limit)]
    current = [dict(r, in_progress=True) for r in intervals.in_progress(conn, device_id)]
    for r in sorted(current + stored, key=lambda r: (-r["start"], r["device_id"]))[:limit]:
        r["start_time"], r["end_time"] = iso(r["start"]), iso(r["end"])
        r["settled_at"] = iso(r["settled_at"])
        if r["in_progress"]:
            r["reading_until"] = iso(r["reading_until"])
        rows.append(r)

    def human(data):
        t = table("device", "start (UTC)", "import kWh", "export kWh", "adjust imp/exp", "estimated", "state")
        for r in data["intervals"]:
            adj = "" if not (r["adjust_import_wh"] or r["adjust_export_wh"]) else \
                f"{r['adjust_import_wh']:+d}/{r['adjust_export_wh']:+d} Wh"
            t.add_row(r["device_id"], r["start_time"], format_kwh(r["metered_import_wh"]),
                      format_kwh(r["metered_export_wh"]), adj, "yes" if r["estimated"] else "",
                      "[cyan]in progress[/]" if r["in_progress"] else r["state"])
        console().print(t)

    app.emit({"intervals": rows, "count": len(rows)}, human)


@click.command("events", cls=OneLineCommand)
@common_options
@click.option("--device", "device_id", help="Only this device.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000000))
def events_cmd(app, device_id, limit):
    """Security events and quarantined (rejected) messages, newest first."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    ev = [dict(e, at=iso(e["at"])) for e in store.events(conn, device_id, limit)]
    q = [dict(r, first_at=iso(r["first_at"]), last_at=iso(r["last_at"]))
         for r in store.quarantined(conn, device_id, limit)]

    def human(data):
        c = console()
        t = table("time (UTC)", "device", "event", "detail", title="security events")
        for e in data["security_events"]:
            t.add_row(e["at"], e["device_id"] or "", e["kind"], e["detail"])
        c.print(t)
        t = table("last seen", "device", "reason", "count", "seq", "detail", title="quarantine")
        for r in data["quarantine"]:
            t.add_row(r["last_at"], r["device_id"] or "", r["reason"], str(r["count"]),
                      "" if r["seq"] is None else str(r["seq"]), r["detail"][:100])
        c.print(t)

    app.emit({"security_events": ev, "quarantine": q}, human)


# ---- status ----------------------------------------------------------------------------

@click.command("status", cls=OneLineCommand)
@common_options
def status_cmd(app):
    """Service state (broker connection, ingest rate, components) and per device last seen
    and backlog. Exit status 1 unless the service runs and is healthy."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    now = time.time()
    svc, updated = store.get_state(conn, "service")
    if svc is None:
        service = {"running": False, "connected": False, "heartbeat_at": None}
    else:
        fresh = updated is not None and now - updated <= 3 * svc.get("heartbeat_s", 2) + 1
        service = dict(svc, running=bool(svc.get("running")) and fresh, heartbeat_at=iso(updated),
                       started_at=iso(svc.get("started_at")))
        service["connected"] = bool(svc.get("connected")) and service["running"]
    components = service.get("components") or {}
    service["components"] = components
    service["healthy"] = bool(service["running"] and service["connected"]
                              and all(c.get("ok") for c in components.values()))
    devices = []
    for d in store.list_devices(conn):
        missing = sum(g["to_seq"] - g["from_seq"] + 1 for g in store.gaps(conn, d["id"], open_only=True))
        st = d["status"] or {}
        counters = st.get("counters") if isinstance(st.get("counters"), dict) else {}
        devices.append({
            "id": d["id"], "revoked": d["revoked"], "state": st.get("state"),
            "last_seen": iso(d["last_seen"]), "last_seen_s": None if d["last_seen"] is None
            else round(now - d["last_seen"], 1),
            "last_seq": d["last_seq"], "acked_seq": d["acked_seq"],
            "unacked_stored": (d["last_seq"] - d["acked_seq"]) if d["last_seq"] is not None
            and d["acked_seq"] is not None else 0,
            "missing": missing, "device_log_depth": counters.get("log_depth"),
        })

    def human(data):
        c = console()
        s = data["service"]
        if s["running"]:
            conn_txt = "[green]connected[/]" if s["connected"] else "[red]not connected[/]"
            c.print(f"gateway running (pid {s.get('pid')}, since {s.get('started_at')}); broker "
                    f"{s.get('broker')} {conn_txt}; ingest {s.get('rate_1m', 0)} readings/s over the last "
                    f"minute; {s.get('accepted', 0)} stored, {s.get('duplicates', 0)} duplicates, "
                    f"{s.get('rejected', 0)} rejected since start")
            for name, comp in sorted(s["components"].items()):
                extra = ", ".join(f"{k} {v}" for k, v in sorted(comp.items()) if k != "ok" and v is not None)
                c.print(f"  {name}: " + ("[green]ok[/]" if comp.get("ok") else "[red]unhealthy[/]")
                        + (f" ({extra})" if extra else ""))
        else:
            c.print(f"[red]gateway not running[/] (last heartbeat {s.get('heartbeat_at') or 'never'})")
        t = table("device", "state", "last seen", "last seq", "acked", "missing", "device backlog")
        for d in data["devices"]:
            state = "revoked" if d["revoked"] else (d["state"] or "")
            t.add_row(d["id"], state, ago(None if d["last_seen_s"] is None else now - d["last_seen_s"], now),
                      str(d["last_seq"] if d["last_seq"] is not None else ""),
                      str(d["acked_seq"] if d["acked_seq"] is not None else ""), str(d["missing"]),
                      "" if d["device_log_depth"] is None else str(d["device_log_depth"]))
        c.print(t)

    # exit 1 when the service is down, off the broker, or a component reports trouble
    app.emit({"service": service, "devices": devices}, human, ok=service["healthy"])


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


@click.command("verify", cls=OneLineCommand)
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
    key = read_public_key(pubkey) if pubkey else None
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
                     gateway_serial=rec.gateway_serial, time=iso(rec.time_epoch),
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
        t = table("#", "result", "PG", "meter", "time", "import kWh", "export kWh", "detail")
        for r in data["records"]:
            t.add_row(str(r["line"]), "[green]OK[/]" if r["verified"] else "[red]FAIL[/]",
                      r.get("pagination") or "", r.get("meter_serial") or "",
                      f"{r.get('time') or ''} {r.get('time_status') or ''}".strip(),
                      format_kwh(r.get("import_wh")), format_kwh(r.get("export_wh")),
                      r.get("error") or f"key {r.get('fingerprint')}")
        console().print(t)
        console().print(f"{data['verified']} of {len(data['records'])} records verified")

    app.emit(out, human)
    if not out["all_verified"]:
        sys.exit(1)


COMMANDS = [readings_cmd, intervals_cmd, events_cmd, status_cmd, verify_cmd]
