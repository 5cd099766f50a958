"""`egs-gw charger …`, `egs-gw account …`, `egs-gw session …`: the central system's CLI.

Calls to a charger (remote start, reset, configuration …) go through the
`ocpp_commands` table: the CLI queues a row and waits; the running service
(`egs-gw run --ocpp …`) polls the table every `command_poll_s`, claims the row,
sends the CALL on the charger's live connection and writes the answer back. No
extra port, no socket file, and the same SQLite file the CLI already uses. A
command nobody claims before `--timeout` is marked expired, so it is never sent
later by surprise.
"""
import json
import time
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from gateway import accounts
from gateway.cliutil import UserError, common_options
from gateway.db import transaction
from gateway.units import format_eea, parse_eea, parse_price
from ocpp_cs import auth, store
from ocpp_cs.settings import Settings

console = Console()
if not console.is_terminal and console.width < 140:  # piped output: do not cut tables at 80
    console = Console(width=140)


def _conn(app):
    conn = app.conn()
    store.init(conn)
    return conn


def _settings(app, need_settlement=False):
    return Settings(app.config["ocpp"], need_settlement=need_settlement)


def _when(epoch):
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(title, columns, rows):
    t = Table(title=title)
    for c in columns:  # one line per row: long values are cut with … (--json has them whole)
        long = c in ("review reason", "value", "owner", "address", "connectors")
        t.add_column(c, no_wrap=True, overflow="ellipsis", min_width=None if long else len(c) + 2,
                     max_width=32 if long else None)
    for r in rows:
        t.add_row(*[("" if v is None else str(v)) for v in r])
    console.print(t)


def _load_meter_key(text):
    if not text:
        return None
    from protocol import ocmf
    try:
        return ocmf.load_public_key(text).hex()
    except ValueError as e:
        raise UserError(f"--meter-key: {e}") from None


def _charger_dict(conn, row):
    d = {k: row[k] for k in row.keys() if k != "password_hash"}  # noqa: SIM118 (sqlite3.Row)
    d["announced_keys"] = json.loads(row["announced_keys"])
    d["has_password"] = bool(row["password_hash"])
    d["connectors"] = [dict(c) for c in store.connectors(conn, row["id"])]
    return d


# ---------------------------------------------------------------- charger

@click.group("charger")
def charger():
    """Charge points: register, inspect, and send them OCPP commands."""


@charger.command("add")
@click.option("--id", "charger_id", required=True, help="chargeBoxId (the URL's last part).")
@click.option("--password", required=True, help="Basic auth password (8..64 characters).")
@click.option("--owner", default=None, help="Station owner's address (receives the fee).")
@click.option("--fee", default="0", show_default=True,
              help="Service fee per kWh: EEA base units, or e.g. '0.05EEA'.")
@click.option("--meter-key", default=None,
              help="The charger's meter public key (hex SEC1, DER or PEM) for OCMF verification.")
@common_options
def charger_add(app, charger_id, password, owner, fee, meter_key):
    """Register a charger (or complete one that waits as Pending)."""
    fee_units = parse_price(fee, bare="base", minimum=0)
    if fee_units and not owner:
        raise UserError("--fee needs --owner (who receives the fee)")
    key = _load_meter_key(meter_key)
    hashed = auth.hash_password(password)
    conn = _conn(app)
    with transaction(conn):
        store.add_charger(conn, charger_id, hashed, owner, fee_units, key)
        row = store.get_charger(conn, charger_id)
    app.emit(_charger_dict(conn, row),
             lambda d: console.print(f"charger {charger_id} registered"
                                     + (f", owner {d['owner']}" if d["owner"] else "")))


@charger.command("set")
@click.option("--id", "charger_id", required=True)
@click.option("--password", default=None)
@click.option("--owner", default=None)
@click.option("--fee", default=None)
@click.option("--meter-key", default=None)
@common_options
def charger_set(app, charger_id, password, owner, fee, meter_key):
    """Change a charger's password, owner, fee or meter key."""
    fields = {}
    if password is not None:
        fields["password_hash"] = auth.hash_password(password)
    if owner is not None:
        fields["owner"] = owner
    if fee is not None:
        fields["fee_per_kwh"] = parse_price(fee, bare="base", minimum=0)
    if meter_key is not None:
        fields["meter_key"] = _load_meter_key(meter_key)
    if not fields:
        raise UserError("nothing to change")
    conn = _conn(app)
    with transaction(conn):
        store.update_charger(conn, charger_id, **fields)
        row = store.get_charger(conn, charger_id)
    app.emit(_charger_dict(conn, row), lambda d: console.print(f"charger {charger_id} updated"))


@charger.command("list")
@common_options
def charger_list(app):
    """All chargers, registered and Pending."""
    conn = _conn(app)
    data = [_charger_dict(conn, r) for r in store.list_chargers(conn)]
    app.emit(data, lambda d: _table("chargers", [
        "id", "status", "owner", "fee/kWh", "meter key", "model", "last seen", "connectors"],
        [(c["id"], c["status"], c["owner"], format_eea(c["fee_per_kwh"]),
          "yes" if c["meter_key"] else "", c["model"], _when(c["last_seen"]),
          " ".join(f"{x['connector_id']}:{x['status']}" for x in c["connectors"])) for c in d]))


@charger.command("show")
@click.option("--id", "charger_id", required=True)
@common_options
def charger_show(app, charger_id):
    """One charger with its connectors and recent sessions."""
    conn = _conn(app)
    row = store.get_charger(conn, charger_id)
    if row is None:
        raise UserError(f"unknown charger {charger_id}")
    d = _charger_dict(conn, row)
    d["sessions"] = [_session_dict(t) for t in
                     store.list_transactions(conn, charger_id=charger_id, limit=10)]

    def human(d):
        for k in ("id", "status", "owner", "vendor", "model", "serial", "firmware", "meter_key"):
            console.print(f"{k:>10}: {d[k] or ''}")
        console.print(f"{'fee/kWh':>10}: {format_eea(d['fee_per_kwh'])}")
        console.print(f"{'last seen':>10}: {_when(d['last_seen'])}")
        _table("connectors", ["connector", "status", "error", "since"],
               [(c["connector_id"], c["status"], c["error_code"], c["ts"]) for c in d["connectors"]])
        _sessions_table(d["sessions"])
    app.emit(d, human)


def _wait_command(app, charger_id, action, payload, timeout):
    conn = _conn(app)
    with transaction(conn):
        if store.get_charger(conn, charger_id) is None:
            raise UserError(f"unknown charger {charger_id}")
        cid = store.queue_command(conn, charger_id, action, payload)
    deadline = time.monotonic() + timeout
    claimed = False
    while True:
        row = store.get_command(conn, cid)
        if row["state"] in ("done", "failed"):
            break
        if time.monotonic() > deadline:
            if claimed:
                # taken but never finished: the service stopped or died during the call
                raise UserError(f"{action} to {charger_id}: the central system took command "
                                f"{cid} but recorded no answer (did it stop?)")
            with transaction(conn):
                expired = store.expire_command(conn, cid)
            if expired:
                raise UserError(f"no central system took the command in {timeout:g} s "
                                "(is `egs-gw run --ocpp HOST:PORT` running on this database?)")
            claimed = True  # it is being sent: wait as long as the service waits for the charger
            deadline = time.monotonic() + _settings(app).call_timeout + 5
        time.sleep(0.1)
    if row["state"] == "failed":
        raise UserError(f"{action} to {charger_id}: {row['error']}")
    return json.loads(row["result"]) if row["result"] else {}


def _command(action, build, human_key="status"):
    """Make a CLI command that queues `action` and prints the charger's answer."""
    def run(app, charger_id, timeout, **kw):
        result = _wait_command(app, charger_id, action, build(**kw), timeout)
        app.emit(result, lambda d: console.print(
            f"{charger_id}: {action} → {d.get(human_key, json.dumps(d))}"))
    return run


def _charger_command(name, help_text):
    def deco(fn):
        fn = common_options(fn)
        fn = click.option("--timeout", default=40.0, show_default=True,
                          help="Seconds to wait for the answer.")(fn)
        fn = click.option("--id", "charger_id", required=True)(fn)
        return charger.command(name, help=help_text)(fn)
    return deco


@_charger_command("remote-start", "RemoteStartTransaction: start charging for an idTag.")
@click.option("--id-tag", required=True)
@click.option("--connector", type=click.IntRange(1), default=None)
def charger_remote_start(app, charger_id, timeout, id_tag, connector):
    payload = {"idTag": id_tag}
    if connector:
        payload["connectorId"] = connector
    _command("RemoteStartTransaction", lambda: payload)(app, charger_id, timeout)


@_charger_command("remote-stop", "RemoteStopTransaction: stop a running transaction.")
@click.option("--transaction", "transaction_id", type=int, required=True)
def charger_remote_stop(app, charger_id, timeout, transaction_id):
    _command("RemoteStopTransaction", lambda: {"transactionId": transaction_id})(
        app, charger_id, timeout)


@_charger_command("reset", "Reset the charger (soft by default).")
@click.option("--hard", is_flag=True)
def charger_reset(app, charger_id, timeout, hard):
    _command("Reset", lambda: {"type": "Hard" if hard else "Soft"})(app, charger_id, timeout)


@_charger_command("unlock", "UnlockConnector.")
@click.option("--connector", type=click.IntRange(1), required=True)
def charger_unlock(app, charger_id, timeout, connector):
    _command("UnlockConnector", lambda: {"connectorId": connector})(app, charger_id, timeout)


@_charger_command("availability", "ChangeAvailability of a connector (0 = whole charger).")
@click.option("--connector", type=click.IntRange(0), default=0, show_default=True)
@click.option("--type", "kind", type=click.Choice(["Operative", "Inoperative"],
              case_sensitive=False), required=True)
def charger_availability(app, charger_id, timeout, connector, kind):
    _command("ChangeAvailability", lambda: {"connectorId": connector,
                                            "type": kind.capitalize()})(app, charger_id, timeout)


@_charger_command("clear-cache", "ClearCache: drop the charger's authorization cache.")
def charger_clear_cache(app, charger_id, timeout):
    _command("ClearCache", dict)(app, charger_id, timeout)


@_charger_command("trigger", "TriggerMessage: ask for a BootNotification, Heartbeat, "
                  "StatusNotification, MeterValues …")
@click.argument("message", type=click.Choice(
    ["BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
     "Heartbeat", "MeterValues", "StatusNotification"]))
@click.option("--connector", type=click.IntRange(0), default=None)
def charger_trigger(app, charger_id, timeout, message, connector):
    payload = {"requestedMessage": message}
    if connector is not None:
        payload["connectorId"] = connector
    _command("TriggerMessage", lambda: payload)(app, charger_id, timeout)


@charger.group("config")
def charger_config():
    """GetConfiguration / ChangeConfiguration."""


@charger_config.command("get")
@click.option("--id", "charger_id", required=True)
@click.option("--timeout", default=40.0, show_default=True)
@click.argument("keys", nargs=-1)
@common_options
def charger_config_get(app, charger_id, timeout, keys):
    """Read configuration keys (all when none given)."""
    payload = {"key": list(keys)} if keys else {}
    result = _wait_command(app, charger_id, "GetConfiguration", payload, timeout)

    def human(d):
        _table(f"{charger_id} configuration", ["key", "value", "readonly"],
               [(k["key"], k.get("value"), k["readonly"]) for k in d.get("configurationKey", [])])
        if d.get("unknownKey"):
            console.print(f"unknown keys: {', '.join(d['unknownKey'])}")
    app.emit(result, human)


@charger_config.command("set")
@click.option("--id", "charger_id", required=True)
@click.option("--timeout", default=40.0, show_default=True)
@click.argument("key")
@click.argument("value")
@common_options
def charger_config_set(app, charger_id, timeout, key, value):
    """Change one configuration key."""
    result = _wait_command(app, charger_id, "ChangeConfiguration",
                           {"key": key, "value": value}, timeout)
    app.emit(result, lambda d: console.print(f"{charger_id}: {key} → {d['status']}"))


# ---------------------------------------------------------------- account

@click.group("account")
def account():
    """Prepaid EV accounts: idTags and their EEA balance."""


def _account_dict(conn, row):
    return {"id_tag": row["id_tag"], "address": row["address"], "status": row["status"],
            "expires_at": row["expires_at"],
            "eea": str(accounts.balance(conn, row["address"], "EEA")),
            "watt_wh": accounts.balance(conn, row["address"], "WATT")}


def _id_tag_row(conn, id_tag):
    row = store.get_id_tag(conn, id_tag)
    if row is None:
        raise UserError(f"unknown idTag {id_tag}")
    return row


@account.command("add")
@click.option("--id-tag", required=True, help="The RFID/idTag the charger reports (≤ 20 chars).")
@click.option("--address", default=None,
              help="The EV owner's address; without it a custodial address is derived.")
@click.option("--expires", default=None, help="Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).")
@common_options
def account_add(app, id_tag, address, expires):
    """Register an idTag and the account it pays from."""
    expires_at = store.parse_time(expires) if expires else None
    conn = _conn(app)
    with transaction(conn):
        store.add_id_tag(conn, id_tag, address, expires_at)
        row = store.get_id_tag(conn, id_tag)
    app.emit(_account_dict(conn, row),
             lambda d: console.print(f"idTag {id_tag} → {d['address']}"))


@account.command("list")
@common_options
def account_list(app):
    conn = _conn(app)
    data = [_account_dict(conn, r) for r in store.list_id_tags(conn)]
    app.emit(data, lambda d: _table("accounts", ["idTag", "address", "status", "EEA", "expires"], [
        (a["id_tag"], a["address"], a["status"], format_eea(a["eea"]), _when(a["expires_at"]))
        for a in d]))


@account.command("show")
@click.option("--id-tag", required=True)
@common_options
def account_show(app, id_tag):
    conn = _conn(app)
    row = _id_tag_row(conn, id_tag)
    d = _account_dict(conn, row)
    settings = _settings(app)
    status, _, reason = store.authorize(conn, id_tag, settings)
    d["authorization"] = {"status": status, "reason": reason}
    d["sessions"] = [_session_dict(t) for t in conn.execute(
        "SELECT * FROM ocpp_transactions WHERE address=? ORDER BY id DESC LIMIT 10",
        (row["address"],)).fetchall()]

    def human(d):
        console.print(f"idTag {d['id_tag']} → {d['address']} ({d['status']})")
        console.print(f"balance: {format_eea(d['eea'])}; would be {status}"
                      + (f" ({reason})" if reason else ""))
        _sessions_table(d["sessions"])
    app.emit(d, human)


@account.command("credit")
@click.option("--id-tag", required=True)
@click.option("--amount", required=True, help="EEA base units, or e.g. '25EEA'.")
@click.option("--ref", default="", help="Deposit reference; the same ref is credited once.")
@common_options
def account_credit(app, id_tag, amount, ref):
    """Record a prepaid EEA deposit in the balance book (no tokens move)."""
    units = parse_eea(amount, bare="base")
    if units <= 0:
        raise UserError("--amount must be positive")
    conn = _conn(app)
    row = _id_tag_row(conn, id_tag)
    with transaction(conn):
        applied = accounts.post(conn, [(row["address"], "EEA", units)], "ocpp_prepaid", ref)
    d = _account_dict(conn, row)
    d["applied"] = applied
    app.emit(d, lambda d: console.print(
        (f"credited {format_eea(units)}" if applied else f"ref {ref!r} was already credited")
        + f"; balance {format_eea(d['eea'])}"))


@account.command("block")
@click.option("--id-tag", required=True)
@click.option("--unblock", is_flag=True)
@common_options
def account_block(app, id_tag, unblock):
    """Block (or unblock) an idTag."""
    conn = _conn(app)
    with transaction(conn):
        store.set_id_tag_status(conn, id_tag, "active" if unblock else "blocked")
        row = store.get_id_tag(conn, id_tag)
    app.emit(_account_dict(conn, row), lambda d: console.print(f"idTag {id_tag}: {d['status']}"))


# ---------------------------------------------------------------- session

def _session_dict(t):
    d = dict(t)
    d["flags"] = json.loads(d["flags"])
    return d


def _sessions_table(rows):
    _table("sessions", ["tx", "charger", "conn", "idTag", "state", "Wh", "EEA", "fee", "started",
                        "review reason"], [
        (s["id"], s["charger_id"], s["connector_id"], s["id_tag"], s["state"], s["energy_wh"],
         format_eea(s["energy_eea"]) if s["energy_eea"] else "",
         format_eea(s["fee_eea"]) if s["fee_eea"] else "", (s["start_ts"] or "")[:16],
         s["review_reason"]) for s in rows])


@click.group("session")
def session():
    """Charging sessions (OCPP transactions) and their settlement."""


@session.command("list")
@click.option("--state", type=click.Choice(["active", "settled", "review", "void"]), default=None)
@click.option("--charger", "charger_id", default=None)
@click.option("--limit", default=50, show_default=True)
@common_options
def session_list(app, state, charger_id, limit):
    conn = _conn(app)
    data = [_session_dict(t) for t in store.list_transactions(conn, state, charger_id, limit)]
    app.emit(data, _sessions_table)


@session.command("show")
@click.argument("transaction_id", type=int)
@common_options
def session_show(app, transaction_id):
    conn = _conn(app)
    tx = store.get_transaction(conn, transaction_id)
    if tx is None:
        raise UserError(f"unknown transaction {transaction_id}")
    d = _session_dict(tx)
    d["meter_values"] = [dict(v) for v in store.meter_values(conn, transaction_id)]

    def human(d):
        for k in ("id", "charger_id", "connector_id", "id_tag", "address", "auth_status",
                  "state", "review_reason", "meter_start", "meter_stop", "start_ts", "stop_ts",
                  "stop_reason", "energy_wh", "energy_source", "signed_begin_wh", "signed_end_wh",
                  "settlement_id"):
            console.print(f"{k:>16}: {'' if d[k] is None else d[k]}")
        for k in ("price_per_kwh", "energy_eea", "fee_eea"):
            console.print(f"{k:>16}: {format_eea(d[k]) if d[k] else ''}")
        if d["flags"]:
            console.print(f"{'flags':>16}: {', '.join(d['flags'])}")
        _table("meter values", ["ts", "context", "format", "value", "Wh", "verified"], [
            (v["ts"], v["context"], v["format"] or "Raw",
             v["value"] if len(v["value"]) < 40 else v["value"][:37] + "…", v["wh"],
             v["verify_state"] or "") for v in d["meter_values"]])
    app.emit(d, human)


@session.command("settle")
@click.argument("transaction_id", type=int)
@click.option("--energy-wh", type=click.IntRange(0), default=None,
              help="The reviewed energy; without it the session is assessed again.")
@click.option("--note", required=True, help="Why (kept with the session).")
@common_options
def session_settle(app, transaction_id, energy_wh, note):
    """Release a session held for review: bill it (once)."""
    settings = _settings(app, need_settlement=True)
    conn = _conn(app)
    with transaction(conn):
        tx = store.get_transaction(conn, transaction_id)
        if tx is None:
            raise UserError(f"unknown transaction {transaction_id}")
        if tx["state"] != "review":
            raise UserError(f"transaction {transaction_id} is {tx['state']}, not under review")
        outcome = store.settle(conn, transaction_id, settings,
                               store.configured_price(settings.price_per_kwh),
                               energy_override=energy_wh, note=f"operator: {note}")
        tx = store.get_transaction(conn, transaction_id)
    d = _session_dict(tx)
    app.emit(d, lambda d: console.print(
        f"transaction {transaction_id}: {outcome}"
        + (f" ({d['review_reason']})" if outcome == "review" else "")))


@session.command("void")
@click.argument("transaction_id", type=int)
@click.option("--note", required=True)
@common_options
def session_void(app, transaction_id, note):
    """Close a session under review without billing it."""
    conn = _conn(app)
    with transaction(conn):
        store.void(conn, transaction_id, note)
        tx = store.get_transaction(conn, transaction_id)
    app.emit(_session_dict(tx), lambda d: console.print(f"transaction {transaction_id}: void"))


COMMANDS = [charger, account, session]
