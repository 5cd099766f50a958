"""idTags: each maps to a prepaid account, and is Accepted only while it is funded.

An idTag registered without an address gets a custodial one derived from it.
Lookups are case-insensitive (OCPP CiString) after vendor suffixes are stripped;
every refusal is written to the event log with its reason.
"""
from eth_utils import keccak

from gateway import accounts
from gateway.accounts import normalize_address
from ocpp_cs.store.base import StoreError, event, iso, now


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
    if row is None:
        status, address, reason = "Invalid", None, "unknown idTag"
    elif row["status"] == "blocked":
        status, address, reason = "Blocked", row["address"], "idTag blocked by operator"
    elif row["expires_at"] is not None and row["expires_at"] <= (at or now()):
        status, address, reason = "Expired", row["address"], "idTag expired"
    else:
        address = row["address"]
        balance = accounts.balance(conn, address, "EEA")
        if balance < settings.min_deposit_eea:
            status = "Blocked"
            reason = f"prepaid balance {balance} below the minimum deposit {settings.min_deposit_eea}"
        else:
            status, reason = "Accepted", ""
    if status != "Accepted":
        event(conn, charger_id, "auth_refused", id_tag=id_tag, status=status, reason=reason)
    return status, address, reason


def id_tag_info(status, expiry=None):
    info = {"status": status}
    if expiry is not None:
        info["expiryDate"] = iso(expiry)
    return info
