"""idTags: each maps to a prepaid account, and is Accepted only while it is funded.

An idTag registered without an address gets a custodial one derived from it.
Lookups are case-insensitive (OCPP CiString) after vendor suffixes are stripped;
every refusal is written to the event log with its reason.

A charger learns only Accepted or Invalid (`wire_status`): unknown, blocked,
expired and underfunded idTags get the same answer after the same work (one
lookup, one balance read, one event row), so Authorize cannot tell which idTags
exist. OCPP 1.6 defines Blocked and Expired but does not require a central system
to use them; the real status is in the event log and `egs-gw account show`.

Grants (`ocpp_auth_grants`): an idTag a charger may start a session for, because
the central system accepted it for that charger (an Authorize, a RemoteStart).
A live StartTransaction spends an unused grant younger than `authorize_window_s`;
a start queued offline needs a grant younger than `GRANT_KEEP_S` (the charger's
authorization cache); anything else is answered Invalid and never billed.
"""
from eth_utils import keccak

from gateway import accounts
from gateway.accounts import normalize_address
from gateway.units import format_eea
from ocpp_cs.store.base import StoreError, event, iso, now

# a grant older than this is forgotten (and no longer backs a start queued offline)
GRANT_KEEP_S = 7 * 24 * 3600
# the account whose balance an unknown idTag reads, so every lookup does the same work
_NOBODY = "0x" + "00" * 20


def tag_address(id_tag):
    """The custodial prepaid address of an idTag registered without one (deterministic)."""
    return "0x" + keccak(("egs-ocpp-idtag|" + id_tag.upper()).encode())[-20:].hex()


def add_id_tag(conn, id_tag, address=None, expires_at=None):
    if not isinstance(id_tag, str) or not 1 <= len(id_tag) <= 20 or not id_tag.isprintable():
        raise StoreError("idTag must be 1..20 printable characters (OCPP IdToken)")
    address = normalize_address(address) if address else tag_address(id_tag)
    if get_id_tag(conn, id_tag) is not None:
        raise StoreError(f"idTag {id_tag} already exists")
    accounts.ensure_account(conn, address, label=f"ocpp idTag {id_tag}")
    conn.execute("INSERT INTO ocpp_id_tags(id_tag, address, expires_at) VALUES(?, ?, ?)",
                 (id_tag, address, expires_at))
    return address


def remove_id_tag(conn, id_tag, force=False):
    """Remove an idTag: it is Invalid from now on. Refused while a session of its account
    is active or its prepaid balance is not zero, unless `force`. Its sessions and the
    balance book (and so the balance) are kept. Returns (active sessions, EEA balance)."""
    row = get_id_tag(conn, id_tag)
    if row is None:
        raise StoreError(f"unknown idTag {id_tag}")
    active = conn.execute("SELECT COUNT(*) FROM ocpp_transactions WHERE address=? AND "
                          "state='active'", (row["address"],)).fetchone()[0]
    eea = accounts.balance(conn, row["address"], "EEA")
    if not force and (active or eea):
        why = [f"{active} active session(s)"] if active else []
        why += [f"a prepaid balance of {eea} EEA base units"] if eea else []
        raise StoreError(f"idTag {row['id_tag']} has {' and '.join(why)}; give --force to remove "
                         "it anyway (the balance stays in the book under its address)")
    conn.execute("DELETE FROM ocpp_auth_grants WHERE id_tag=?", (row["id_tag"],))
    conn.execute("DELETE FROM ocpp_id_tags WHERE id_tag=?", (row["id_tag"],))
    event(conn, None, "id_tag_removed", id_tag=row["id_tag"], address=row["address"],
          active_sessions=active, balance_eea=str(eea), forced=bool(force))
    return active, eea


def set_id_tag_status(conn, id_tag, status):
    if get_id_tag(conn, id_tag) is None:
        raise StoreError(f"unknown idTag {id_tag}")
    conn.execute("UPDATE ocpp_id_tags SET status=? WHERE id_tag=?", (status, id_tag))


def get_id_tag(conn, id_tag):
    return conn.execute("SELECT * FROM ocpp_id_tags WHERE id_tag=?", (id_tag,)).fetchone()


def list_id_tags(conn):
    return conn.execute("SELECT * FROM ocpp_id_tags ORDER BY id_tag").fetchall()


def strip_suffix(id_tag, suffixes):
    upper = id_tag.upper()
    for suffix in suffixes:
        if upper.endswith(suffix.upper()) and len(id_tag) > len(suffix):
            return id_tag[: -len(suffix)]
    return id_tag


def authorize(conn, id_tag, settings, charger_id=None, at=None):
    """→ (status, address or None, reason). Reasons are logged as events."""
    tag = strip_suffix(id_tag, settings.id_tag_suffixes)
    row = get_id_tag(conn, tag)
    # one path for every idTag: the same lookup, balance read and event (timing tells nothing)
    balance = accounts.balance(conn, row["address"] if row is not None else _NOBODY, "EEA")
    if row is None:
        status, address, reason = "Invalid", None, "unknown idTag"
    elif row["status"] == "blocked":
        status, address, reason = "Blocked", row["address"], "idTag blocked by operator"
    elif row["expires_at"] is not None and row["expires_at"] <= (at or now()):
        status, address, reason = "Expired", row["address"], "idTag expired"
    elif balance < settings.min_deposit_eea:
        status, address = "Blocked", row["address"]
        reason = f"prepaid balance {balance} below the minimum deposit {settings.min_deposit_eea}"
    else:
        status, address, reason = "Accepted", row["address"], ""
    if status != "Accepted":
        event(conn, charger_id, "auth_refused", id_tag=id_tag, status=status, reason=reason)
    return status, address, reason


def authorize_for(conn, charger_id, id_tag, settings):
    """An Authorize from `charger_id`: authorize, and grant the idTag to it when Accepted."""
    status, address, reason = authorize(conn, id_tag, settings, charger_id)
    if status == "Accepted":
        grant(conn, charger_id, id_tag, "Authorize")
    return status, address, reason


def wire_status(status):
    """What a charger is told: Accepted, ConcurrentTx, or Invalid for every other refusal."""
    return status if status in ("Accepted", "ConcurrentTx") else "Invalid"


def grant(conn, charger_id, id_tag, source, at=None):
    """The central system accepted `id_tag` for `charger_id` (Authorize, RemoteStart)."""
    at = now() if at is None else at
    conn.execute("DELETE FROM ocpp_auth_grants WHERE granted_at < ?", (at - GRANT_KEEP_S,))
    conn.execute(
        "INSERT INTO ocpp_auth_grants(charger_id, id_tag, source, granted_at) VALUES(?, ?, ?, ?) "
        "ON CONFLICT(charger_id, id_tag) DO UPDATE SET source=excluded.source, "
        "granted_at=excluded.granted_at, used_at=NULL", (charger_id, id_tag, source, at))


def revoke_grant(conn, charger_id, id_tag):
    conn.execute("DELETE FROM ocpp_auth_grants WHERE charger_id=? AND id_tag=? AND used_at IS NULL",
                 (charger_id, id_tag))


def spend_grant(conn, charger_id, id_tag, window_s, offline):
    """→ the grant's source when `charger_id` may start a session for `id_tag`, else None.

    Live: an unused grant younger than `window_s`. Queued offline: any grant younger
    than GRANT_KEEP_S (what the charger's authorization cache holds). Either way the
    grant is spent: the next live start needs a new Authorize or RemoteStart.
    """
    row = conn.execute("SELECT * FROM ocpp_auth_grants WHERE charger_id=? AND id_tag=?",
                       (charger_id, id_tag)).fetchone()
    if row is None:
        return None
    if offline:
        if row["granted_at"] < now() - GRANT_KEEP_S:
            return None
    elif row["used_at"] is not None or row["granted_at"] < now() - window_s:
        return None
    conn.execute("UPDATE ocpp_auth_grants SET used_at=? WHERE charger_id=? AND id_tag=?",
                 (now(), charger_id, id_tag))
    return row["source"]


def id_tag_info(status, expiry=None):
    info = {"status": status}
    if expiry is not None:
        info["expiryDate"] = iso(expiry)
    return info


# ---- book-only goodwill credit ---------------------------------------------------------

def goodwill_credit(conn, address, units, ref, max_per_account, max_total):
    """Post a book-only goodwill credit (no tokens move; never withdrawable on chain),
    bounded by what one account and all accounts may have outstanding. Call inside the
    caller's transaction. Returns False when `ref` was already credited."""
    from gateway.ledger.storage import GOODWILL_REASON, book_only

    outstanding = book_only(conn)
    mine = outstanding.get(address, 0)
    if mine + units > max_per_account:
        raise StoreError(f"{address} would have {format_eea(mine + units)} of goodwill credit, above "
                         f"ocpp.goodwill_max_per_account = {format_eea(max_per_account)} "
                         f"({format_eea(mine)} outstanding)")
    total = sum(outstanding.values())
    if total + units > max_total:
        raise StoreError(f"goodwill credit would total {format_eea(total + units)}, above "
                         f"ocpp.goodwill_max_total = {format_eea(max_total)} ({format_eea(total)} outstanding)")
    return accounts.post(conn, [(address, "EEA", units)], GOODWILL_REASON, ref)


def goodwill_reverse(conn, address, units, note):
    """Take back up to the outstanding goodwill credit of `address`, never below a zero
    balance; the note is kept with the entry. Call inside the caller's transaction."""
    from gateway.ledger.storage import GOODWILL_REVERSAL, book_only

    if not note.strip():
        raise StoreError("a reversal needs a --note saying why")
    mine = book_only(conn, address).get(address, 0)
    if units > mine:
        raise StoreError(f"{address} has only {format_eea(mine)} of goodwill credit outstanding")
    have = accounts.balance(conn, address, "EEA")
    if units > have:
        raise StoreError(f"{address} holds only {format_eea(have)} (the rest of its goodwill credit is spent)")
    n = conn.execute("SELECT COUNT(*) FROM balance_entries WHERE reason=?", (GOODWILL_REVERSAL,)).fetchone()[0]
    accounts.post(conn, [(address, "EEA", -units)], GOODWILL_REVERSAL, f"#{n + 1}: {note.strip()}")
