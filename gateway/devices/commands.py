"""`egs-gw device …` and `egs-gw broker …`: the device lifecycle from the command line.

    device add | list | show | set | revoke | restore | rotate-password | replace-meter
           | provision | flash | update
    broker config

Options and output only: the work is done beside this module (provision, installer,
update_server, broker) and by ingest's store, which holds the device registry. Every
command takes --config/--db/--json; mistakes are one line on stderr, exit status 1
(2 for a usage mistake).
"""
import tempfile
from pathlib import Path

import click

from gateway import config as config_mod
from gateway.cliutil import (
    OneLineGroup,
    Seconds,
    UserError,
    common_options,
    confirm,
    console,
    error_console,
    iso,
    read_public_key,
    secret_option,
    table,
)
from gateway.devices import broker as broker_mod
from gateway.devices import installer, update_server
from gateway.devices import settings as firmware_settings
from gateway.ingest import store


def _fingerprint(pub_hex):
    from protocol.ocmf import key_fingerprint
    return key_fingerprint(bytes.fromhex(pub_hex))


def _device_out(d):
    out = {k: v for k, v in d.items() if k != "dirty_since"}
    out["fingerprint"] = _fingerprint(d["pubkey"])
    for k in ("revoked_at", "last_seen", "status_at", "created_at"):
        out[k] = iso(out.get(k))
    return out


# ---- device ------------------------------------------------------------------------

@click.group("device", cls=OneLineGroup)
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
    conn = store.init_if_needed(app.conn())
    reserved = (app.config["mqtt"]["user"], app.config["broker"]["gateway_user"])
    d = store.add_device(conn, device_id, read_public_key(pubkey), meter_serial, account, first_seq,
                         reserved=tuple(r for r in reserved if r))
    out = _device_out(d)
    app.emit(out, lambda o: console().print(
        f"registered [bold]{o['id']}[/] meter {o['meter_serial']} key {o['fingerprint']}"))


@device.command("list")
@common_options
def device_list(app):
    """All registered devices."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    devices = [_device_out(d) for d in store.list_devices(conn)]

    def human(data):
        t = table("id", "meter", "account", "key", "last seq", "acked", "last seen", "state")
        for d in data["devices"]:
            state = "revoked" if d["revoked"] else (d["status"] or {}).get("state", "")
            t.add_row(d["id"], d["meter_serial"], d["account"] or "", d["fingerprint"],
                      str(d["last_seq"] if d["last_seq"] is not None else ""),
                      str(d["acked_seq"] if d["acked_seq"] is not None else ""),
                      d["last_seen"] or "never", state)
        console().print(t)

    app.emit({"devices": devices}, human)


def _readable(value, indent=0):
    """A status value as text for people: nested keys as `key: value` lines, None as "-"."""
    pad = "  " * indent
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if not value:
            return "-"
        lines = []
        for k, v in value.items():
            if isinstance(v, dict) and v:
                lines.append(f"{pad}{k}:\n{_readable(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {_readable(v, indent + 1)}")
        return "\n".join(lines)
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(v, indent) for v in value) if value else "-"
    return str(value)


@device.command("show")
@common_options
@click.option("--id", "device_id", required=True)
def device_show(app, device_id):
    """One device: key, meters, sequence state, open gaps, last status."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    out = _device_out(store.require_device(conn, device_id))
    out["meters"] = [dict(m, registered_at=iso(m["registered_at"])) for m in store.meters(conn, device_id)]
    out["open_gaps"] = [{"from": g["from_seq"], "to": g["to_seq"], "detected_at": iso(g["detected_at"])}
                        for g in store.gaps(conn, device_id, open_only=True)]
    out["readings"] = store.count_readings(conn, device_id)

    def human(o):
        c = console()
        t = table(show_header=False)
        for k in ("id", "fingerprint", "pubkey", "meter_serial", "account", "revoked", "revoked_reason",
                  "readings", "last_seq", "acked_seq", "last_seen", "created_at"):
            t.add_row(k, _readable(o.get(k)))
        t.add_row("status", _readable(o["status"]))
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
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
def device_revoke(app, device_id, reason, broker_dir, yes):
    """Stop accepting a device's readings and drop its broker credential."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    if store.require_device(conn, device_id)["revoked"]:
        raise UserError(f"device {device_id} is already revoked")
    confirm(yes, f"revoke device {device_id} (its readings are refused, its broker login removed)?")
    d = store.revoke_device(conn, device_id, reason)
    bdir = broker_dir or app.config["broker"]["dir"]
    removed = broker_mod.remove_credential(bdir, device_id) if Path(bdir).is_dir() else False
    out = _device_out(d)
    out["broker_credential_removed"] = removed
    out["broker_reloaded"] = broker_mod.reload(bdir) if removed else False
    app.emit(out, lambda o: console().print(
        f"revoked [bold]{o['id']}[/]" + (f"; credential removed from {bdir}/passwd" if removed else "")
        + ("; mosquitto reloaded" if o["broker_reloaded"] else
           (" (reload mosquitto: SIGHUP)" if removed else ""))))


@device.command("restore")
@common_options
@click.option("--id", "device_id", required=True)
@click.option("--note", default="", help="Why (recorded with the security event).")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Broker directory to give the device's credential back to (default: broker.dir).")
def device_restore(app, device_id, note, broker_dir):
    """Undo `device revoke`: accept the device's readings again and restore its broker login."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    d = store.restore_device(conn, device_id, note)
    bdir = broker_dir or app.config["broker"]["dir"]
    has_broker = (Path(bdir) / "passwd").exists()
    kept = broker_mod.restore_credential(bdir, device_id) if has_broker else False
    out = _device_out(d)
    out["broker_credential_restored"] = has_broker
    out["password_kept"] = kept
    out["broker_reloaded"] = broker_mod.reload(bdir) if has_broker else False

    def human(o):
        c = console()
        c.print(f"restored [bold]{o['id']}[/]: its readings count again")
        if not has_broker:
            c.print(f"no broker configuration in {bdir}: run `egs-gw broker config` to give it its login")
        elif not kept:
            c.print(f"it has a new broker password: egs-gw device provision --port PORT --id {o['id']}")
        if has_broker and not o["broker_reloaded"]:
            c.print("reload mosquitto (SIGHUP)")

    app.emit(out, human)


@device.command("rotate-password")
@common_options
@click.argument("device_id", metavar="DEVICE")
@click.option("--port", help="The device's serial console: the new password is pushed to it "
              "there (else re-provision it with `device provision`).")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Broker directory (default: broker.dir).")
@click.option("--baud", default=115200, show_default=True, type=int, help="Console baud rate.")
@click.option("--timeout", default=30.0, show_default=True, type=Seconds(), help="Seconds per reply.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
def device_rotate_password(app, device_id, port, broker_dir, baud, timeout, yes):
    """Give a device a new MQTT password (after a leak): the old one stops working."""
    from gateway.devices import provision

    conn = store.init_if_needed(app.conn(must_exist=True))
    d = store.require_device(conn, device_id)
    if d["revoked"]:
        raise UserError(f"device {device_id} is revoked (`device restore` it first)")
    bdir = broker_dir or app.config["broker"]["dir"]
    if not (Path(bdir) / "passwd").exists():
        raise UserError(f"no broker configuration in {bdir} (set --broker-dir or broker.dir)")
    confirm(yes, f"give device {device_id} a new broker password (the old one stops working)?")
    pushed = False
    if port:
        # the device first (it takes effect at its reboot), then the broker, then the reboot:
        # a device that cannot be reached keeps its old, still valid password
        con = provision.Console(port, baud, timeout)
        try:
            hello = con.request({"cmd": "hello"})
            if hello.get("device_id") != device_id:
                raise UserError(f"the device on {port} is {hello.get('device_id')!r}, not {device_id!r}")
            if con.request({"cmd": "pubkey"}).get("pubkey", "").lower() != d["pubkey"].lower():
                raise UserError(f"the device on {port} has another key than {device_id}'s registration")
            password = broker_mod.new_password()
            con.request({"cmd": "provision", "mqtt": {"username": device_id, "password": password}})
            broker_mod.rotate_credential(bdir, device_id, password)
            reloaded = broker_mod.reload(bdir)
            con.request({"cmd": "reboot"})
            pushed = True
        finally:
            con.close()
    else:
        broker_mod.rotate_credential(bdir, device_id)
        reloaded = broker_mod.reload(bdir)
    out = {"id": device_id, "credential_file": str(broker_mod.credential_path(bdir, device_id)),
           "broker_reloaded": reloaded, "pushed_to_device": pushed}

    def human(o):
        c = console()
        c.print(f"new broker password for [bold]{device_id}[/] in {o['credential_file']}")
        if not reloaded:
            c.print("reload mosquitto (SIGHUP) to retire the old password")
        if pushed:
            c.print(f"pushed to the device on {port}; it restarts with it")
        else:
            c.print(f"the device still has the old one: egs-gw device provision --port PORT --id {device_id}")

    app.emit(out, human)


@device.command("replace-meter")
@common_options
@click.option("--id", "device_id", required=True)
@click.option("--meter-serial", required=True, help="Serial of the new meter.")
@click.option("--note", default="", help="Why (recorded with the meter history).")
def device_replace_meter(app, device_id, meter_serial, note):
    """Register a new meter behind a device: its registers start a new baseline."""
    conn = store.init_if_needed(app.conn(must_exist=True))
    epoch = store.replace_meter(conn, device_id, meter_serial, note)
    out = {"id": device_id, "meter_serial": meter_serial, "epoch": epoch}
    app.emit(out, lambda o: console().print(
        f"{o['id']}: meter {o['meter_serial']} registered (epoch {o['epoch']})"))


@device.command("set")
@common_options
@click.argument("device_id", metavar="DEVICE")
@click.option("--account", help="EVM address the device's energy is settled to.")
@click.option("--no-account", is_flag=True, help="Settle its energy to no account.")
def device_set(app, device_id, account, no_account):
    """Change what the gateway stores about a device (its account)."""
    if account is not None and no_account:
        raise UserError("--account and --no-account contradict each other: give one")
    if account is None and not no_account:
        raise UserError("nothing to change: give --account ADDR or --no-account")
    conn = store.init_if_needed(app.conn(must_exist=True))
    out = _device_out(store.set_account(conn, device_id, None if no_account else account))
    app.emit(out, lambda o: console().print(
        f"{o['id']}: account {o['account'] or 'none'}"))


@device.command("provision")
@common_options
@click.option("--port", required=True, help="Serial port of the device (e.g. /dev/ttyUSB0).")
@click.option("--id", "device_id", required=True, help="Device id to give it.")
@click.option("--community", help="Community id (default: gateway.community).")
@click.option("--broker", "broker_addr", help="MQTT broker HOST:PORT the device connects to "
              "(default for a new device: mqtt.broker; else unchanged).")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Broker directory holding the credentials (default: broker.dir).")
@click.option("--wifi-ssid", help="Wi-Fi network (ESP32).")
@click.option("--wifi-password-file", help="File holding the Wi-Fi password (ESP32), - for stdin "
              "(asked for on a terminal).")
@click.option("--wifi-password", help="The Wi-Fi password itself (visible in shell history and "
              "ps; warned about).")
@click.option("--meter-model", help="Meter model (a new device: sdm630).")
@click.option("--meter-address", type=int, help="Modbus unit id (a new device: 1).")
@click.option("--meter-baud", type=int, help="Meter baud rate (a new device: 9600).")
@click.option("--meter-serial", help="Meter serial, when the meter does not report one.")
@click.option("--meter-link", help="Meter connection for the unix port (tty path or tcp:HOST:PORT).")
@click.option("--broker-tls/--no-broker-tls", default=None,
              help="The device connects with TLS (or not); unchanged when not given.")
@click.option("--broker-ca", type=click.Path(dir_okay=False),
              help="CA certificate (PEM or DER) the broker's certificate must chain to; installed "
                   "on the device (default with TLS: broker.cafile, else mqtt.ca_file).")
@click.option("--insecure", is_flag=True, help="TLS without verifying the broker (a lab only: "
              "a fake broker could read the device's password and forge acks).")
@click.option("--interval", "interval_s", type=float, help="Reading interval in seconds.")
@click.option("--account", help="EVM address for this device's energy.")
@click.option("--baud", default=115200, show_default=True, type=int, help="Console baud rate.")
@click.option("--timeout", default=30.0, show_default=True, type=Seconds(), help="Seconds per reply.")
def device_provision(app, port, device_id, community, broker_addr, broker_dir, wifi_ssid,
                     wifi_password_file, wifi_password, meter_model, meter_address, meter_baud,
                     meter_serial, meter_link, broker_tls,
                     broker_ca, insecure, interval_s, account, baud, timeout):
    """Provision a device over its serial console and register it."""
    from gateway.devices import provision

    wifi_password = secret_option(wifi_password, wifi_password_file, "--wifi-password")
    community = community or app.config["gateway"]["community"]
    if community is config_mod.REQUIRED:
        raise UserError("--community (or gateway.community in the config) is required")
    conn = store.init_if_needed(app.conn())
    result = provision.provision(
        conn, port, device_id, community=community,
        broker=broker_addr, default_broker=app.config["mqtt"]["broker"],
        broker_dir=broker_dir or app.config["broker"]["dir"],
        wifi_ssid=wifi_ssid, wifi_password=wifi_password, meter_model=meter_model,
        meter_address=meter_address, meter_baud=meter_baud, meter_serial=meter_serial,
        meter_link=meter_link, interval_s=interval_s, account=account, broker_tls=broker_tls,
        broker_ca=broker_ca, insecure=insecure,
        default_ca=app.config["broker"]["cafile"] or app.config["mqtt"]["ca_file"] or None,
        baud=baud, timeout=timeout)

    def human(o):
        c = console()
        c.print("[bold]device label[/]")
        t = table(show_header=False)
        t.add_row("device", o["id"])
        t.add_row("community", o["community"])
        t.add_row("meter serial", o["meter_serial"])
        t.add_row("key fingerprint", o["fingerprint"])
        t.add_row("account", o["account"] or "none")
        c.print(t)
        if not o.get("broker_reloaded"):
            c.print("new broker credential: reload mosquitto (SIGHUP) so the device can connect")

    app.emit(result, human)


@device.command("flash", context_settings={"ignore_unknown_options": True,
                                                               "allow_extra_args": True})
@common_options
@click.option("--port", required=True, help="Serial port of the board (e.g. /dev/ttyUSB0).")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False),
              help="Signed release bundle (make firmware: dist/firmware-<version>.tar).")
@click.option("--release-key", envvar="EGS_RELEASE_PUBKEY",
              help="Release public key (hex, or a file holding it) the bundle must be signed "
                   "with; the device keeps it for updates. Default: firmware.release_pubkey.")
@click.option("--micropython", "image", type=click.Path(dir_okay=False, exists=True),
              help="MicroPython firmware image to write first (ESP32_GENERIC .bin).")
@click.option("--erase", is_flag=True, help="Erase the whole flash first (a new device).")
@click.option("--dry-run", is_flag=True, help="Check the bundle and print the commands only.")
@click.option("--id", "device_id", help="Then provision the device with this id (further "
              "options go to `device provision`).")
@click.pass_context
def device_flash(ctx, app, port, bundle_path, release_key, image, erase, dry_run, device_id):
    """Flash MicroPython and install a signed firmware release, then provision."""
    out = error_console()
    if ctx.args and not device_id:
        # extra options are meant for `device provision`; without --id a typo
        # (--eras, --dryrun) would otherwise be dropped silently
        raise UserError(f"unknown options {' '.join(ctx.args)} (options for `device "
                        "provision` need --id)")
    key_value = release_key or firmware_settings.release_pubkey(app.config)
    if not key_value:
        raise UserError("no release key: give --release-key or set firmware.release_pubkey")
    pubkey = installer.load_release_key(key_value)
    if erase and not image:
        raise UserError("--erase wipes MicroPython too: give --micropython IMAGE with it")
    manifest = installer.check_bundle(bundle_path, pubkey)
    if manifest.get("port") != "esp32":
        raise UserError(f"bundle {bundle_path} is built for the {manifest.get('port')!r} port, "
                        "not esp32: build it with `make firmware`")
    with tempfile.TemporaryDirectory() as tmp:
        installer.stage_tree(bundle_path, pubkey, tmp)
        steps = installer.plan(port, tmp, image, erase)
        total = 1 + len(steps) + (1 if device_id else 0)
        out.print(f"[1/{total}] bundle {Path(bundle_path).name}: version "
                  f"{manifest['version']}, {len(manifest['files'])} files, signature and "
                  "hashes good")
        if dry_run:
            app.emit({"version": manifest["version"], "steps": [
                {"step": name, "argv": argv} for name, argv in steps]})
            return
        for i, (name, argv) in enumerate(steps, 2):
            out.print(f"[{i}/{total}] {name} ...")
            code = installer.run_step(argv)
            if code != 0:
                raise UserError(f"{name} failed (exit {code}): {' '.join(argv[:6])} ...")
    out.print(f"installed firmware {manifest['version']} on {port}")
    if device_id:
        argv = ["--port", port, "--id", device_id] + list(ctx.args)
        if app.config_path:
            argv += ["--config", app.config_path]
        argv += ["--db", str(app.db_path)]    # --db given to flash registers the device there
        if app.json:
            argv.append("--json")       # provision's JSON is the one document on stdout
        out.print(f"[{total}/{total}] handing over to: egs-gw device provision "
                  + " ".join(argv))
        device_provision.main(argv, standalone_mode=False, parent=ctx.parent)
    else:
        out.print(f"next: egs-gw device provision --port {port} --id <device-id> ...")
        app.emit({"version": manifest["version"], "port": port, "installed": True,
                  "steps": [name for name, _ in steps]}, human=lambda data: None)


def _loopback(host):
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@device.command("update")
@common_options
@click.option("--release", "release", required=True, type=click.Path(dir_okay=False),
              help="Signed release bundle (dist/firmware-<version>.tar).")
@click.option("--device", "device_ids", multiple=True, help="Device id (repeatable).")
@click.option("--all", "all_devices", is_flag=True, help="Every registered, non-revoked device.")
@click.option("--release-key", envvar="EGS_RELEASE_PUBKEY",
              help="Release public key (hex or file). Default: firmware.release_pubkey.")
@click.option("--host", "http_host", help="Address devices reach this gateway on "
              "(default: firmware.update_host, else the broker's host).")
@click.option("--port", "http_port", type=int, help="HTTP port (default: firmware.update_port, "
              "0 = any free port).")
@click.option("--timeout", default=600.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the devices.")
def device_update(app, release, device_ids, all_devices, release_key, http_host, http_port,
                  timeout):
    """Offer a signed firmware release to devices over MQTT and follow the rollout."""
    if bool(device_ids) == bool(all_devices):
        raise UserError("give --device ID (repeatable) or --all")
    fw = app.config.get("firmware", {})
    key_value = release_key or firmware_settings.release_pubkey(app.config)
    if not key_value:
        raise UserError("no release key: give --release-key or set firmware.release_pubkey")
    pubkey = installer.load_release_key(key_value)
    installer.check_bundle(release, pubkey)
    community = app.config["gateway"]["community"]
    if not isinstance(community, str):
        raise UserError("gateway.community is required in the config")
    if all_devices:
        devices = [d["id"] for d in store.list_devices(store.init_if_needed(app.conn(must_exist=True)))
                   if not d["revoked"]]
        if not devices:
            raise UserError("no registered devices")
    else:
        devices = list(dict.fromkeys(device_ids))
    mq = app.config["mqtt"]
    broker = mq["broker"]
    host = http_host or fw.get("update_host") or broker.rpartition(":")[0] or "127.0.0.1"
    port = http_port if http_port is not None else fw.get("update_port", 0)
    err = error_console()
    if _loopback(host):
        # right for devices on this machine (the emulator); a real meter cannot reach it
        err.print(f"warning: devices will download from {host}, this machine's loopback "
                  "address; for meters on the network set firmware.update_host or --host "
                  "to an address they reach this gateway on")
    last = {}

    def progress(states):
        for d, s in states.items():
            key = (s["result"], s["detail"])
            if last.get(d) != key:
                last[d] = key
                err.print(f"{d}: {s['result']} {s['detail']}".rstrip())

    user, password = broker_mod.updater_login(app.config)     # its own user: never the gateway's
    result = update_server.update_devices(broker, community, devices, release, pubkey, user=user,
                                          password=password, http_host=host, http_port=port,
                                          timeout=timeout, progress=progress)

    def human(r):
        t = table("device", "result", "detail", title=f"update to {r['version']}")
        for d, s in r["devices"].items():
            t.add_row(d, s["result"], s["detail"])
        console().print(t, soft_wrap=False)     # the title centred over the table

    app.emit(result, human)
    if any(s["result"] == update_server.FAILED for s in result["devices"].values()):
        raise SystemExit(1)


# ---- broker ----------------------------------------------------------------------------

@click.group("broker", cls=OneLineGroup)
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
@click.option("--init", "init_db", is_flag=True, help="First-time setup: create the gateway "
              "database when there is none yet.")
@click.option("--force", is_flag=True, help="Write passwd even if device users in it that this "
              "database does not know would lose their login.")
def broker_config(app, out_dir, community, host, port, tls_port, tls_host, certfile, keyfile, cafile,
                  gateway_user, run_as, init_db, force):
    """Write mosquitto.conf, passwd, acl and device credentials into a directory."""
    b = app.config["broker"]
    community = community or app.config["gateway"]["community"]
    if community is config_mod.REQUIRED:
        raise UserError("--community (or gateway.community in the config) is required")
    if not init_db and not Path(app.db_path).exists():
        raise UserError(f"no gateway database at {app.db_path} (set --db or store.db; "
                        "--init creates a new one on first setup)")
    conn = store.init_if_needed(app.conn())
    try:
        summary = broker_mod.write_config(
            conn, out_dir or b["dir"], community,
            host=host or b["host"], port=port if port is not None else b["port"],
            tls_port=tls_port if tls_port is not None else b["tls_port"], tls_host=tls_host or b["tls_host"],
            certfile=certfile or b["certfile"], keyfile=keyfile or b["keyfile"], cafile=cafile or b["cafile"],
            gateway_user=gateway_user or b["gateway_user"], run_as=run_as, force=force)
    except broker_mod.LostUsers as e:
        raise UserError(f"{e} (database {app.db_path}); check --db/store.db, or give --force") from None
    summary["reloaded"] = broker_mod.reload(summary["dir"])

    def human(s):
        c = console()
        c.print(f"wrote {s['config']} (listener {s['listener']}"
                + (f", TLS {s['tls_listener']}" if s["tls_listener"] else "") + ")")
        c.print(f"{len(s['devices'])} device credential(s) + gateway user {s['gateway_user']} "
                f"+ updater user {s['updater_user']} in {s['passwd']}")
        c.print("running mosquitto reloaded" if s["reloaded"] else f"start: mosquitto -c {s['config']}")
        c.print(f"gateway: egs-gw run --mqtt-user {s['gateway_user']} --mqtt-password-file "
                f"{s['gateway_password_file']}")
        c.print(f"device update: its own user {s['updater_user']}, password in {s['updater_password_file']}")

    app.emit(summary, human)


COMMANDS = [device, broker]
