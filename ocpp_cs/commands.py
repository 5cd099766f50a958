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
from gateway.cliutil import (
    OneLineGroup,
    Seconds,
    UserError,
    common_options,
    confirm,
    secret_option,
)
from gateway.db import transaction
from gateway.ledger.commands import confirm_amount
from gateway.units import CONFIRM_ABOVE, EEA, describe_eea, format_eea, parse_eea, parse_price
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

@click.group("charger", cls=OneLineGroup)
def charger():
    """Charge points: register, inspect, and send them OCPP commands."""


@charger.command("add")
@click.option("--id", "charger_id", required=True, help="chargeBoxId (the URL's last part).")
@click.option("--password-file", type=str, default=None,
              help="File holding the Basic auth password (8..64 characters), - for stdin; "
                   "asked for on a terminal when not given.")
@click.option("--password", default=None,
              help="The password itself (visible in shell history and ps; warned about).")
@click.option("--owner", default=None, help="Station owner's address (receives the fee).")
@click.option("--fee", default="0", show_default=True,
              help="Service fee per kWh in EEA ('0.05'); base units need 'base'.")
@click.option("--meter-key", default=None,
              help="The charger's meter public key (hex SEC1, DER or PEM) for OCMF verification.")
@common_options
def charger_add(app, charger_id, password_file, password, owner, fee, meter_key):
    """Register a charger (or complete one that waits as Pending)."""
    password = secret_option(password, password_file, "--password", required=True)
    fee_units = parse_price(fee, bare="eea", minimum=0)
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
@click.option("--password-file", type=str, default=None,
              help="File holding the new password, - for stdin (asked for on a terminal).")
@click.option("--password", default=None,
              help="The new password itself (visible in shell history and ps; warned about).")
@click.option("--owner", default=None)
@click.option("--fee", default=None)
@click.option("--meter-key", default=None)
@common_options
def charger_set(app, charger_id, password_file, password, owner, fee, meter_key):
    """Change a charger's password, owner, fee or meter key."""
    password = secret_option(password, password_file, "--password")
    fields = {}
    if password is not None:
        fields["password_hash"] = auth.hash_password(password)
    if owner is not None:
        fields["owner"] = owner
    if fee is not None:
        fields["fee_per_kwh"] = parse_price(fee, bare="eea", minimum=0)
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


@charger.command("remove")
@click.option("--id", "charger_id", required=True)
@click.option("--force", is_flag=True, help="Remove it even with active sessions (they stay, for review).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@common_options
def charger_remove(app, charger_id, force, yes):
    """Remove a charger: it can no longer connect. Its sessions and events are kept."""
    conn = app.conn(must_exist=True)
    store.init(conn)
    if store.get_charger(conn, charger_id) is None:
        raise UserError(f"unknown charger {charger_id}")
    confirm(yes, f"remove charger {charger_id} (it can no longer connect)?")
    with transaction(conn):
        active = store.remove_charger(conn, charger_id, force=force)
    app.emit({"id": charger_id, "removed": True, "active_sessions": active},
             lambda d: console.print(f"charger {charger_id} removed"
                                     + (f"; {active} active session(s) kept for review" if active else "")))


def _wait_command(app, charger_id, action, payload, timeout):
    conn = _conn(app)
    with transaction(conn):
        if store.get_charger(conn, charger_id) is None:
            raise UserError(f"unknown charger {charger_id}")
        cid = store.queue_command(conn, charger_id, action, payload)
    deadline = time.monotonic() + timeout
    claimed = False
    try:
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
                claimed = True  # being sent: wait as long as the service waits for the charger
                deadline = time.monotonic() + _settings(app).call_timeout + 5
            time.sleep(0.1)
    except KeyboardInterrupt:
        # not sent later by surprise, and a secret in it (AuthorizationKey) is not kept
        with transaction(conn):
            store.expire_command(conn, cid)
        raise
    if row["state"] == "failed":
        raise UserError(f"{action} to {charger_id}: {row['error']}")
    return json.loads(row["result"]) if row["result"] else {}


# a charger's answers that mean "not done": the answer is printed, the exit status is 1
REFUSED = {"Rejected", "NotSupported", "NotImplemented", "Failed", "UnlockFailed"}


def _command(action, build, human_key="status"):
    """Make a CLI command that queues `action` and prints the charger's answer."""
    def run(app, charger_id, timeout, **kw):
        result = _wait_command(app, charger_id, action, build(**kw), timeout)
        app.emit(result, lambda d: console.print(
            f"{charger_id}: {action} → {d.get(human_key, json.dumps(d))}"),
            ok=result.get(human_key) not in REFUSED)
    return run


def _charger_command(name, help_text):
    def deco(fn):
        fn = common_options(fn)
        fn = click.option("--timeout", default=40.0, show_default=True, type=Seconds(),
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
@click.option("--timeout", default=40.0, show_default=True, type=Seconds())
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
@click.option("--timeout", default=40.0, show_default=True, type=Seconds())
@click.argument("key")
@click.argument("value")
@common_options
def charger_config_set(app, charger_id, timeout, key, value):
    """Change one configuration key."""
    result = _wait_command(app, charger_id, "ChangeConfiguration",
                           {"key": key, "value": value}, timeout)
    app.emit(result, lambda d: console.print(f"{charger_id}: {key} → {d['status']}"),
             ok=result.get("status") not in REFUSED)


# ---------------------------------------------------------------- account

@click.group("account", cls=OneLineGroup)
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


@account.command("deposit")
@click.argument("target", metavar="IDTAG|ADDRESS")
@click.argument("amount")
@click.option("--from-key", "from_key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Keystore of the wallet that pays (default: the gateway's ledger.keystore).")
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Its password (default: ledger.password_file / ledger.password_env).")
@click.option("--timeout", default=120.0, show_default=True, type=Seconds(),
              help="How long to wait for each transaction to be mined.")
@click.option("--yes", is_flag=True, help=f"Do not ask above {CONFIRM_ABOVE // EEA} EEA (scripts).")
@common_options
def account_deposit(app, target, amount, from_key, password_file, timeout, yes):
    """Prepay AMOUNT EEA (a bare number is EEA; 'N base' for base units) into the escrow of
    IDTAG's account (or of ADDRESS) on chain: EEA.approve if needed, then WATT.depositFor
    from a funded wallet. The book counts it once, the way the ledger worker does."""
    from gateway.ledger import keystore, outbox
    from gateway.ledger import tables as ledger_tables
    from gateway.ledger.chain import Chain
    from gateway.ledger.settings import Settings as LedgerSettings
    from gateway.ledger.worker import DEPOSIT_REASON

    units = parse_eea(amount, bare="eea")
    if units <= 0:
        raise UserError("AMOUNT must be positive")
    conn = _conn(app)
    ledger_tables.init(conn)
    if target.lower().startswith("0x"):
        row, address = None, accounts.normalize_address(target)
        if address == "0x" + "00" * 20:
            raise UserError("cannot deposit for the zero address")
    else:
        row = _id_tag_row(conn, target)
        address = row["address"]
    ls = LedgerSettings(app.config)
    password = keystore.read_password(password_file or ls.password_file, None if password_file else ls.password_env)
    signer = keystore.load(from_key or ls.keystore, password)
    who = f"idTag {row['id_tag']} ({address})" if row else address
    confirm_amount(app, yes, f"depositing {describe_eea(units)} to {who} from {signer.address.lower()}", units)
    chain = Chain.from_settings(ls)
    chain.check()
    stored = outbox.max_nonce(conn, signer.address.lower())
    tx_hash, block, events = chain.deposit_for(signer, address, units, ls.max_fee_wei,
                                               min_nonce=0 if stored is None else stored + 1, timeout_s=timeout)
    posted = False
    if block <= chain.block_number() - ls.confirmations:
        # deep enough for the worker's deposit scan: post it now under the same reason and
        # reference the scan uses, so the scan finds it already there and adds nothing
        with transaction(conn):
            for ref, account_, value in events:
                posted |= accounts.post(conn, [(account_, "EEA", value)], DEPOSIT_REASON, ref)
    d = {"id_tag": row["id_tag"] if row else None, "address": address, "amount": str(units),
         "from": signer.address.lower(), "tx_hash": tx_hash, "block": block, "posted": posted,
         "eea": str(accounts.balance(conn, address, "EEA"))}
    app.emit(d, lambda d: console.print(
        f"deposited {format_eea(units)} for {who} in {tx_hash} (block {block}); "
        + (f"balance {format_eea(d['eea'])}" if posted else
           f"the ledger worker posts it once {ls.confirmations} block(s) deep")))


@account.command("credit")
@click.option("--id-tag", required=True)
@click.option("--amount", required=True, help="EEA ('25' or '25 EEA'); base units need 'base'.")
@click.option("--ref", default="", help="Credit reference; the same ref is credited once.")
@click.option("--yes", is_flag=True, help=f"Do not ask above {CONFIRM_ABOVE // EEA} EEA (scripts).")
@common_options
def account_credit(app, id_tag, amount, ref, yes):
    """Book-only goodwill credit (no tokens move; never withdrawable on chain), bounded by
    ocpp.goodwill_max_per_account and ocpp.goodwill_max_total; `account debit` reverses it.
    Real prepayment is `account deposit`."""
    from ocpp_cs.store.id_tags import goodwill_credit

    units = parse_eea(amount, bare="eea")
    if units <= 0:
        raise UserError("--amount must be positive")
    settings = _settings(app)
    conn = _conn(app)
    row = _id_tag_row(conn, id_tag)
    confirm_amount(app, yes, f"crediting {describe_eea(units)} to idTag {row['id_tag']} ({row['address']})", units)
    with transaction(conn):
        applied = goodwill_credit(conn, row["address"], units, ref, settings.goodwill_max_per_account,
                                  settings.goodwill_max_total)
    d = _account_dict(conn, row)
    d["applied"] = applied
    app.emit(d, lambda d: console.print(
        (f"credited {format_eea(units)}" if applied else f"ref {ref!r} was already credited")
        + f"; balance {format_eea(d['eea'])}"))


@account.command("debit")
@click.option("--id-tag", required=True)
@click.option("--amount", required=True, help="EEA ('25' or '25 EEA'); base units need 'base'.")
@click.option("--note", required=True, help="Why (kept with the entry).")
@click.option("--yes", is_flag=True, help=f"Do not ask above {CONFIRM_ABOVE // EEA} EEA (scripts).")
@common_options
def account_debit(app, id_tag, amount, note, yes):
    """Reverse (part of) a goodwill credit: at most what is outstanding, never below zero."""
    from ocpp_cs.store.id_tags import goodwill_reverse

    units = parse_eea(amount, bare="eea")
    if units <= 0:
        raise UserError("--amount must be positive")
    conn = _conn(app)
    row = _id_tag_row(conn, id_tag)
    confirm_amount(app, yes, f"taking back {describe_eea(units)} of goodwill credit from idTag "
                   f"{row['id_tag']} ({row['address']})", units)
    with transaction(conn):
        goodwill_reverse(conn, row["address"], units, note)
    d = _account_dict(conn, row)
    app.emit(d, lambda d: console.print(f"reversed {format_eea(units)}; balance {format_eea(d['eea'])}"))


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


@account.command("remove")
@click.option("--id-tag", required=True)
@click.option("--force", is_flag=True, help="Remove it even with active sessions or a balance "
              "(the balance stays in the book under its address).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@common_options
def account_remove(app, id_tag, force, yes):
    """Remove an idTag: it is no longer accepted. Its sessions and balance book are kept."""
    conn = app.conn(must_exist=True)
    store.init(conn)
    row = _id_tag_row(conn, id_tag)
    confirm(yes, f"remove idTag {row['id_tag']} (it is no longer accepted)?")
    with transaction(conn):
        active, eea = store.remove_id_tag(conn, id_tag, force=force)
    app.emit({"id_tag": row["id_tag"], "address": row["address"], "removed": True,
              "active_sessions": active, "eea": str(eea)},
             lambda d: console.print(f"idTag {d['id_tag']} removed"
                                     + (f"; balance {format_eea(d['eea'])} kept under {d['address']}"
                                        if eea else "")))


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


@click.group("session", cls=OneLineGroup)
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
        + (f" ({d['review_reason']})" if outcome == "review" else "")), ok=outcome != "review")


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


@session.command("close")
@click.argument("transaction_id", type=int)
@click.option("--note", required=True, help="Why (kept with the session).")
@click.option("--yes", is_flag=True, help="Close it without asking.")
@common_options
def session_close(app, transaction_id, note, yes):
    """Force-close an active session its charger never stopped: bill it (once) up to the
    last meter value received."""
    from ocpp_cs.store import billing

    settings = _settings(app, need_settlement=True)
    conn = _conn(app)
    tx = store.get_transaction(conn, transaction_id)
    if tx is None:
        raise UserError(f"unknown transaction {transaction_id}")
    if tx["state"] != "active":
        raise UserError(f"transaction {transaction_id} is {tx['state']}, not active")
    if not yes:
        wh, ts = billing.last_register(conn, tx)
        click.confirm(f"close transaction {transaction_id} ({tx['charger_id']} connector "
                      f"{tx['connector_id']}, idTag {tx['id_tag']}, started {tx['start_ts']}) "
                      f"with {wh - tx['meter_start']} Wh, up to the meter value of {ts}?",
                      abort=True, err=True)
    with transaction(conn):
        outcome = billing.force_close(conn, transaction_id, note, settings,
                                      store.configured_price(settings.price_per_kwh))
        tx = store.get_transaction(conn, transaction_id)
    app.emit(_session_dict(tx), lambda d: console.print(
        f"transaction {transaction_id}: force-closed, {outcome}"
        + (f" ({d['review_reason']})" if outcome == "review" else "")))


COMMANDS = [charger, account, session]
