"""`egs-gw ledger …`: deploy the contracts, watch the outbox, compare with the chain.

    egs-gw ledger key new|show          the gateway's ledger key (encrypted keystore)
    egs-gw ledger deploy [--admin A]    EEA + WATT from contracts/build, gateway role granted, A proposed as admin
    egs-gw ledger status                chain, contracts, role, outbox; exit 1 unless all is well
    egs-gw ledger balances [--account]  book and chain side by side
    egs-gw ledger reconcile             every difference between chain and store; exit 1 on any
    egs-gw ledger storage set|list      storage owners and their capacity (commission split)
    egs-gw ledger withdraw ACCOUNT N    pay escrowed EEA back to an account
    egs-gw ledger outbox [--state S]    the queued and signed intents
    egs-gw ledger run [--until-idle]    the settlement loop and worker without the rest of `run`
"""
import json
import logging
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from gateway import accounts
from gateway.cliutil import OneLineGroup, Seconds, UserError, common_options, confirm
from gateway.db import transaction
from gateway.ledger import keystore, outbox, settlement, tables
from gateway.ledger.settings import Settings
from gateway.units import CONFIRM_ABOVE, EEA, EeaType, describe_eea, format_eea, format_kwh

COMMANDS = []


def _settings(app):
    return Settings(app.config)


def _conn(app, create=False):
    """The store; read-only commands refuse to create an empty one at a mistyped path."""
    from pathlib import Path

    if not create and not Path(app.db_path).exists():
        raise UserError(f"no gateway database at {app.db_path} (check --db or store.db)")
    conn = app.conn()
    tables.init(conn)
    return conn


def _account(s):
    return keystore.load(s.keystore, keystore.read_password(s.password_file, s.password_env))


def _chain(s, with_contracts=True):
    from gateway.ledger.chain import Chain  # web3 costs a second at every CLI start

    return Chain.from_settings(s, with_contracts)


def _fail_chain(fn):
    """ChainUnavailable is a user-facing one-liner too."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConnectionError as e:  # ChainUnavailable (web3 is imported only when used)
            raise UserError(str(e)) from None

    return wrapper


def _console():
    return Console(highlight=False, soft_wrap=True)


def confirm_amount(app, yes, what, units):
    """Say what is about to move, as read (with --json the output carries the amount
    instead); above CONFIRM_ABOVE ask first (`--yes` skips; no terminal and no --yes:
    a one-line error, exit 2, nothing done)."""
    if not app.json:
        click.echo(what, err=True)
    if units > CONFIRM_ABOVE:
        confirm(yes, f"{what}?")


@click.group("ledger", cls=OneLineGroup)
def ledger():
    """WATT and EEA on the chain: deployment, settlement outbox, reconciliation."""


COMMANDS.append(ledger)


# ---- key --------------------------------------------------------------------------

@ledger.group("key")
def key():
    """The gateway's ledger key (eth-account encrypted keystore)."""


@key.command("new")
@click.option("--private-key-env", default=None,
              help="Import the key from this environment variable instead of generating one.")
@common_options
def key_new(app, private_key_env):
    """Create the keystore at ledger.keystore (password from ledger.password_file/_env)."""
    import os

    s = _settings(app)
    password = keystore.read_password(s.password_file, s.password_env)
    private = None
    if private_key_env:
        private = os.environ.get(private_key_env)
        if not private:
            raise UserError(f"environment variable {private_key_env} is not set")
    address = keystore.create(s.keystore, password, private)
    app.emit({"address": address.lower(), "keystore": str(s.keystore)},
             lambda d: click.echo(f"created {d['keystore']} for {d['address']}"))


@key.command("show")
@common_options
def key_show(app):
    """The keystore's address (no password needed)."""
    s = _settings(app)
    app.emit({"address": keystore.address(s.keystore), "keystore": str(s.keystore)},
             lambda d: click.echo(d["address"]))


# ---- deploy -----------------------------------------------------------------------

def _admin_address(ctx, param, value):
    if value is None:
        return None
    try:
        address = accounts.normalize_address(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if int(address, 16) == 0:
        raise click.BadParameter("the zero address cannot be the admin")
    return address


def _deploy_text(d, path):
    lines = [f"EEA  {d['eea']}", f"WATT {d['watt']}", f"gateway {d['gateway']}", f"admin {d['admin']}"]
    if d.get("proposed_admin"):
        lines.append(f"proposed admin {d['proposed_admin']}: it becomes admin when it sends acceptAdmin() "
                     f"(data {ACCEPT_ADMIN_DATA}) to WATT {d['watt']} from its own wallet")
    lines.append(f"written to {path}")
    return "\n".join(lines)


ACCEPT_ADMIN_DATA = "0x0e18b681"   # keccak256("acceptAdmin()")[:4]; tests check it against the ABI


@ledger.command("deploy")
@click.option("--gateway", "gateway_addr", default=None,
              help="Address to grant the gateway role (default: the keystore's).")
@click.option("--admin", "admin_addr", default=None, callback=_admin_address, metavar="ADDRESS",
              help="Cold key to become WATT's admin: proposed after deployment, it accepts from its own "
                   "wallet (default: the keystore's key stays admin, with a warning).")
@click.option("--force", is_flag=True, help="Deploy even if the deployment file exists.")
@common_options
@_fail_chain
def deploy_cmd(app, gateway_addr, admin_addr, force):
    """Deploy EEA (distribution from ledger.distribution) and WATT; write ledger.deployment."""
    from gateway.ledger.deploy import deploy

    s = _settings(app)
    if s.deployment_path.exists() and not force:
        raise UserError(f"{s.deployment_path} exists: contracts are deployed (use --force for new ones)")
    distribution = s.distribution_addresses()
    account = _account(s)
    chain = _chain(s, with_contracts=False)
    if chain.call(lambda: chain.w3.eth.chain_id) != s.chain_id:
        raise UserError(f"the node at {s.rpc_url} is not chain {s.chain_id}")
    out = deploy(chain, account, distribution, s.education_pool, s.network_pool,
                 gateway=gateway_addr, path=s.deployment_path, admin=admin_addr)
    app.emit(out, lambda d: click.echo(_deploy_text(d, s.deployment_path)))
    hot = {out["admin"], out["gateway"]}
    if not out["proposed_admin"] or out["proposed_admin"] in hot:
        who = out["proposed_admin"] or out["admin"]
        click.echo(f"warning: WATT's admin {who} is the gateway's hot key: a stolen gateway key could grant "
                   f"itself more rights; deploy with --admin ADDRESS of a cold key (docs/ledger.md)", err=True)


# ---- fund (local chains) ------------------------------------------------------------

@ledger.command("fund")
@click.argument("address", required=False)
@click.option("--eth", "eth", type=click.IntRange(min=1, max=10**9), default=100, show_default=True,
              help="Whole ETH the address holds afterwards.")
@common_options
@_fail_chain
def fund_cmd(app, address, eth):
    """Give ADDRESS (default: the gateway's key) ETH for gas on a local Anvil chain.

    Uses Anvil's `anvil_setBalance`; any other chain refuses it: fund the address
    there from a funded account."""
    from gateway.ledger.chain import RpcError

    s = _settings(app)
    address = accounts.normalize_address(address) if address else keystore.address(s.keystore)
    chain = _chain(s, with_contracts=False)
    try:
        chain.rpc("anvil_setBalance", [address, hex(eth * 10**18)])
    except RpcError as e:
        raise UserError(f"the node at {s.rpc_url} cannot set balances ({e}): `ledger fund` is for a "
                        f"local Anvil chain; send ETH to {address} from a funded account instead") from None
    wei = chain.native_balance(address)
    app.emit({"address": address, "balance_wei": str(wei)},
             lambda d: click.echo(f"{address} now holds {eth} ETH"))


# ---- status -----------------------------------------------------------------------

@ledger.command("status")
@common_options
def status_cmd(app):
    """Chain, contracts, gateway role and the outbox."""
    from pathlib import Path

    s = _settings(app)
    data = {"rpc_url": s.rpc_url, "chain_id": s.chain_id, "outbox": {}, "oldest_pending": None,
            "storage_owners": [], "commission_rate": s.commission_rate}
    if Path(app.db_path).exists():
        conn = _conn(app)
        data["outbox"] = outbox.counts(conn)
        oldest = conn.execute(
            "SELECT id, settlement_id, kind, state, last_error, created_at FROM ledger_outbox "
            "WHERE state NOT IN ('confirmed', 'rejected') ORDER BY id LIMIT 1").fetchone()
        data["oldest_pending"] = dict(oldest) if oldest else None
        data["storage_owners"] = [{"owner": o, "capacity_wh": c} for o, c in tables.storage_owners(conn)]
    else:
        data["store_error"] = f"no gateway database at {app.db_path}"
    try:
        data["gateway"] = keystore.address(s.keystore)
    except keystore.KeystoreError as e:
        data["gateway"] = None
        data["keystore_error"] = str(e)
    try:
        dep = s.deployment()
        data["watt"], data["eea"] = dep["watt"], dep["eea"]
    except ValueError as e:
        dep = None
        data["deployment_error"] = str(e)
    try:
        from gateway.ledger.chain import Chain

        chain = Chain(s.rpc_url, s.chain_id, dep, s.rpc_timeout_s)
        data["chain"] = "up"
        data["node_chain_id"] = chain.call(lambda: chain.w3.eth.chain_id)
        data["block"] = chain.block_number()
        if data["gateway"]:
            data["gas_balance_wei"] = chain.native_balance(data["gateway"])
            if dep:
                chain.check()
                data["gateway_role"] = chain.is_gateway(data["gateway"])
                data["watt_supply_wh"] = chain.call(chain.watt.functions.totalSupply().call)
    except ConnectionError as e:  # ChainUnavailable (web3 is imported only when used)
        data["chain"] = "down"
        data["chain_error"] = str(e)
    except ValueError as e:
        data["chain_error"] = str(e)

    def human(d):
        c = _console()
        c.print(f"chain     {d['chain']}  {d['rpc_url']}  id {d.get('node_chain_id', '?')}"
                f"  block {d.get('block', '?')}")
        for k in ("chain_error", "deployment_error", "keystore_error", "store_error"):
            if d.get(k):
                c.print(f"[red]{k.replace('_', ' ')}: {d[k]}[/red]")
        c.print(f"WATT      {d.get('watt', '-')}   EEA {d.get('eea', '-')}")
        c.print(f"gateway   {d.get('gateway') or '-'}  role {d.get('gateway_role', '?')}"
                f"  gas balance {d.get('gas_balance_wei', '?')} wei")
        c.print("outbox    " + ("  ".join(f"{k} {v}" for k, v in sorted(d["outbox"].items())) or "empty"))
        if d["oldest_pending"]:
            o = d["oldest_pending"]
            c.print(f"oldest    #{o['id']} {o['kind']} {o['state']} {o['settlement_id'][:18]}… "
                    f"{o['last_error']}")
        c.print(f"commission {d['commission_rate']} EEA units per kWh per interval, "
                f"{len(d['storage_owners'])} storage owner(s)")

    # exit 1 unless the ledger can settle: chain reached, contracts and key in order (no
    # store yet is fine: the service creates it)
    healthy = data.get("chain") == "up" and not any(
        data.get(k) for k in ("chain_error", "deployment_error", "keystore_error"))
    app.emit(data, human, ok=healthy)


# ---- balances ---------------------------------------------------------------------------

@ledger.command("balances")
@click.option("--account", default=None, help="Only this address.")
@common_options
def balances_cmd(app, account):
    """WATT and escrowed EEA per account: the book, and the chain when reachable."""
    s = _settings(app)
    conn = _conn(app)
    if account:
        account = accounts.normalize_address(account)
    rows = {}
    for (address, asset), total in sorted(accounts.balances(conn, address=account).items()):
        rows.setdefault(address, {"account": address, "book_watt_wh": 0, "book_eea": 0})
        rows[address]["book_watt_wh" if asset == "WATT" else "book_eea"] = int(total)
    if account and account not in rows:
        rows[account] = {"account": account, "book_watt_wh": 0, "book_eea": 0}
    grid = settlement.grid_import(conn, account)
    for a, r in rows.items():
        r["grid_import_wh"] = grid.get(a, 0)
    chain_note = None
    try:
        chain = _chain(s)
        chain.check()
        for a, (w, e) in chain.balances(sorted(rows)).items():
            rows[a]["chain_watt_wh"], rows[a]["chain_eea"] = w, e
    except (ConnectionError, ValueError) as e:  # ChainUnavailable or a bad answer
        chain_note = str(e)
    data = {"accounts": [rows[a] for a in sorted(rows)], "chain_error": chain_note}
    for r in data["accounts"]:  # EEA amounts exceed JSON-safe integers: strings
        for k in ("book_eea", "chain_eea"):
            if k in r:
                r[k] = str(r[k])

    def human(d):
        t = Table("account", "WATT kWh (book)", "WATT kWh (chain)", "EEA (book)", "EEA (chain)",
                  "grid import kWh")
        for r in d["accounts"]:
            t.add_row(r["account"], format_kwh(r["book_watt_wh"]),
                      format_kwh(r["chain_watt_wh"]) if "chain_watt_wh" in r else "?",
                      format_eea(r["book_eea"], unit=False),
                      format_eea(r["chain_eea"], unit=False) if "chain_eea" in r else "?",
                      format_kwh(r["grid_import_wh"]))
        c = _console()
        c.print(t)
        if d["chain_error"]:
            c.print(f"[yellow]chain: {d['chain_error']}[/yellow]")

    app.emit(data, human)


# ---- reconcile ----------------------------------------------------------------------------

@ledger.command("reconcile")
@common_options
@_fail_chain
def reconcile_cmd(app):
    """Compare chain and store; print every difference; exit 1 if there is any."""
    from gateway.ledger.reconcile import reconcile

    s = _settings(app)
    conn = _conn(app)
    chain = _chain(s)
    report = reconcile(conn, chain)
    report["watt_supply"] = str(report["watt_supply"])
    report["escrow_total"] = str(report["escrow_total"])
    report["in_flight"] = {k: str(v) for k, v in report["in_flight"].items()}
    report["book_only"] = {k: str(v) for k, v in report["book_only"].items()}
    # amounts as strings, like the totals (EEA base units go beyond what JSON readers keep exact)
    report["differences"] = [{k: str(v) if isinstance(v, int) else v for k, v in d.as_dict().items()}
                             for d in report["differences"]]

    def human(d):
        c = _console()
        c.print(f"block {d['block']}: {d['applied']} settlement(s) applied, {d['pending']} pending, "
                f"{d['accounts']} account(s), WATT supply {format_kwh(int(d['watt_supply']))} kWh")
        if d["unassigned_export_wh"] or d["unassigned_import_wh"]:
            c.print(f"devices without an account: export {format_kwh(d['unassigned_export_wh'])} kWh, "
                    f"import {format_kwh(d['unassigned_import_wh'])} kWh (not settled)")
        if d["book_only"]:
            c.print(f"book-only goodwill credit: {format_eea(sum(int(v) for v in d['book_only'].values()))} "
                    f"over {len(d['book_only'])} account(s) (not on chain, not a difference)")
        for diff in d["differences"]:
            c.print(f"[red]DIFF[/red] {diff['detail']}")
        c.print("[green]clean[/green]" if not d["differences"] else
                f"[red]{len(d['differences'])} difference(s)[/red]")

    app.emit(report, human)
    if report["differences"]:
        sys.exit(1)


# ---- storage owners -------------------------------------------------------------------------

@ledger.group("storage")
def storage():
    """Storage owners: 80 % of the commission is split by their registered capacity."""


@storage.command("set")
@click.argument("owner")
@click.argument("capacity_wh", type=click.IntRange(min=0))
@common_options
def storage_set(app, owner, capacity_wh):
    """Register OWNER with CAPACITY_WH (0 removes it); goes to the chain through the outbox."""
    from gateway.ledger.storage import set_capacity

    s = _settings(app)
    sid = set_capacity(_conn(app, create=True), s.community, owner, capacity_wh)
    app.emit({"owner": accounts.normalize_address(owner), "capacity_wh": capacity_wh, "settlement_id": sid},
             lambda d: click.echo(f"queued: {d['owner']} capacity {d['capacity_wh']} Wh ({sid})"))


@storage.command("list")
@common_options
def storage_list(app):
    conn = _conn(app)
    owners = [{"owner": o, "capacity_wh": c} for o, c in tables.storage_owners(conn)]

    def human(d):
        t = Table("owner", "capacity kWh")
        for r in d:
            t.add_row(r["owner"], format_kwh(r["capacity_wh"]))
        _console().print(t)

    app.emit(owners, human)


# ---- withdraw -------------------------------------------------------------------------------

@ledger.command("withdraw")
@click.argument("account")
@click.argument("amount", type=EeaType(bare="eea", minimum=1))
@click.option("--yes", is_flag=True, help=f"Do not ask above {CONFIRM_ABOVE // EEA} EEA (scripts).")
@common_options
@_fail_chain
def withdraw_cmd(app, account, amount, yes):
    """Pay AMOUNT escrowed EEA (a bare number is EEA; 'N base' for base units) back to ACCOUNT's wallet.

    Only chain-backed EEA: refused for more than the account's escrow on chain holds
    (beyond what queued settlements take from it) and for a book-only goodwill credit."""
    from web3 import Web3

    from gateway.ledger.storage import StorageError, withdraw

    s = _settings(app)
    try:
        address = accounts.normalize_address(account)
    except accounts.BalanceError as e:
        raise UserError(str(e)) from None
    conn = _conn(app)
    chain = _chain(s)
    try:
        chain.check()
        escrow = chain.call(chain.watt.functions.escrowOf(Web3.to_checksum_address(address)).call)
    except ValueError as e:  # ChainError: wrong chain, no contract code
        raise UserError(str(e)) from None
    confirm_amount(app, yes, f"withdrawing {describe_eea(amount)} to {address}", amount)
    try:
        sid = withdraw(conn, s.community, account, amount, chain_escrow=escrow)
    except (StorageError, accounts.BalanceError) as e:
        raise UserError(str(e)) from None
    app.emit({"account": accounts.normalize_address(account), "amount": str(amount), "settlement_id": sid},
             lambda d: click.echo(f"queued: withdraw {format_eea(amount)} to {d['account']} ({sid})"))


# ---- outbox ---------------------------------------------------------------------------------

@ledger.command("outbox")
@click.option("--state", type=click.Choice(["queued", "signed", "confirmed", "rejected"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50)
@common_options
def outbox_cmd(app, state, limit):
    """Intents, newest first, with their transaction."""
    conn = _conn(app)
    sql = ("SELECT o.id, o.settlement_id, o.kind, o.state, o.attempts, o.last_error, o.created_at, "
           "(SELECT t.tx_hash FROM ledger_txs t WHERE t.outbox_id=o.id ORDER BY t.id DESC LIMIT 1) AS tx_hash, "
           "(SELECT t.nonce FROM ledger_txs t WHERE t.outbox_id=o.id ORDER BY t.id DESC LIMIT 1) AS nonce, "
           "(SELECT t.block_number FROM ledger_txs t WHERE t.outbox_id=o.id ORDER BY t.id DESC LIMIT 1) "
           "AS block_number FROM ledger_outbox o")
    args = []
    if state:
        sql += " WHERE o.state=?"
        args.append(state)
    sql += " ORDER BY o.id DESC LIMIT ?"
    args.append(limit)
    rows = [dict(r) for r in conn.execute(sql, args)]

    def human(d):
        t = Table("#", "kind", "state", "settlement id", "nonce", "block", "note")
        for r in d:
            t.add_row(str(r["id"]), r["kind"], r["state"], r["settlement_id"][:18] + "…",
                      "" if r["nonce"] is None else str(r["nonce"]),
                      "" if r["block_number"] is None else str(r["block_number"]), r["last_error"])
        _console().print(t)

    app.emit(rows, human)


# ---- run --------------------------------------------------------------------------------------

def _check_gas(app, s):
    """Before `run` signs anything: the gateway's key can pay the next queued intent's
    gas bound, else one line saying what to fund. A chain that is down is `run`'s to report."""
    from pathlib import Path

    from gateway.ledger import intents
    from gateway.ledger.chain import InsufficientFunds

    if not Path(app.db_path).exists():
        return
    conn = _conn(app)
    intent = outbox.next_queued(conn)
    if intent is None:
        return
    try:
        _, _, gas = intents.call_for(intent["kind"], intent["settlement_id"], json.loads(intent["payload"]),
                                     len(tables.storage_owners(conn)))
    except (ValueError, TypeError):
        return      # the worker rejects it, with its own message
    try:
        chain = _chain(s)
        chain.require_funds(keystore.address(s.keystore), min(gas, s.max_tx_gas), chain.fees(s.max_fee_wei),
                            f"the next settlement ({intent['kind']})")
    except InsufficientFunds as e:
        raise UserError(str(e)) from None
    except (ConnectionError, ValueError):
        return


def _run_json_lines(runner, until_idle, timeout):
    """Runner.run_until's loop, printing one JSON line per tick that did something (settled,
    signed, sent, confirmed, deposits) or saw the chain change state; scripts follow it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown_chain = None
    while True:
        summary = runner.tick()
        summary["chain"] = summary.get("chain", "up")
        if summary["chain"] != shown_chain or any(
                summary.get(k) for k in ("settled", "signed", "sent", "confirmed", "deposits")):
            click.echo(json.dumps(summary, sort_keys=True, default=str), nl=True)
            shown_chain = summary["chain"]
        if until_idle and runner.idle():
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        if not runner.busy():
            time.sleep(runner.s.tick_s)


@ledger.command("run")
@click.option("--until-idle", is_flag=True, help="Exit once the outbox is empty and all is confirmed.")
@click.option("--timeout", type=Seconds(), default=None, help="Give up after this many seconds (exit 1).")
@common_options
def run_cmd(app, until_idle, timeout):
    """Settle due intervals and drive the outbox to the chain (what `egs-gw run` does for the ledger)."""
    from gateway.ledger.runner import Runner

    s = _settings(app)
    _check_gas(app, s)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Runner(s, app.db_path)
    try:
        if app.json:
            ok = _run_json_lines(runner, until_idle, timeout)
        else:
            ok = runner.run_until(lambda: False, until_idle=until_idle, timeout=timeout)
    except KeyboardInterrupt:
        ok = True
    finally:
        runner.close()
    if not ok:
        raise UserError(f"outbox not drained after {timeout} s")


__all__ = ["COMMANDS", "json", "time", "transaction"]
