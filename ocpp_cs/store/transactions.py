"""Transactions: StartTransaction and the transaction rows.

The transactionId is the row id of `ocpp_transactions` (AUTOINCREMENT: unique,
never reused, never derived from time). A StartTransaction retry with the same
(charger, connector, idTag, meterStart, timestamp) returns the same id. A start
queued offline is kept with its own timestamp and flagged. A start for an idTag the
charger was not granted (id_tags.spend_grant: an Authorize or RemoteStart for it)
is answered Invalid and recorded so, which holds it for review instead of billing
it. Stopping a transaction
is in `billing.py`, because a stop and its settlement are one decision.
"""
import json

from ocpp_cs.store.base import StoreError, event, in_int64, now, parse_time
from ocpp_cs.store.id_tags import authorize, id_tag_info, spend_grant, wire_status

# an idTag in an active transaction younger than this is refused elsewhere (ConcurrentTx);
# older ones are taken as lost (charger reset without StopTransaction)
CONCURRENT_WINDOW_S = 12 * 3600

def start_transaction(conn, charger_id, connector_id, id_tag, meter_start, timestamp, settings,
                      reservation_id=None):
    """→ (transaction_id, idTagInfo dict). Idempotent for identical retries."""
    if connector_id < 1:
        raise StoreError(f"connectorId of a transaction must be >= 1, got {connector_id}")
    if meter_start < 0:
        raise StoreError(f"meterStart must not be negative, got {meter_start}")
    if not in_int64(meter_start) or not in_int64(connector_id):
        raise StoreError("meterStart or connectorId is out of range (64-bit integer)")
    start_epoch = parse_time(timestamp)
    row = conn.execute(
        "SELECT id, auth_status FROM ocpp_transactions WHERE charger_id=? AND connector_id=? "
        "AND id_tag=? AND meter_start=? AND start_ts=?",
        (charger_id, connector_id, id_tag, meter_start, timestamp)).fetchone()
    if row is not None:
        return row["id"], id_tag_info(wire_status(row["auth_status"]))
    status, address, reason = authorize(conn, id_tag, settings, charger_id, at=start_epoch)
    offline = start_epoch < now() - settings.offline_after_s
    source = spend_grant(conn, charger_id, id_tag, settings.authorize_window_s, offline)
    if source is None and status == "Accepted":
        status, reason = "Invalid", "not authorized on this charger (no Authorize or RemoteStart)"
        event(conn, charger_id, "security", what="StartTransaction for an idTag not granted "
              "to this charger", id_tag=id_tag, connector=connector_id, offline=offline)
    flags = []
    if offline:
        flags.append("offline_start")
        if address is None:
            # the car was charged on the charger's local decision: keep it, flag it
            flags.append("offline_unknown_id_tag")
            event(conn, charger_id, "offline_unknown_id_tag", id_tag=id_tag,
                  connector=connector_id, start=timestamp)
    if status == "Accepted" and address is not None:
        busy = conn.execute(
            "SELECT id FROM ocpp_transactions WHERE address=? AND state='active' "
            "AND start_epoch > ? LIMIT 1", (address, now() - CONCURRENT_WINDOW_S)).fetchone()
        if busy is not None and not offline:
            status, reason = "ConcurrentTx", f"idTag already in transaction {busy['id']}"
            event(conn, charger_id, "auth_refused", id_tag=id_tag, status=status, reason=reason)
    cur = conn.execute(
        "INSERT INTO ocpp_transactions(charger_id, connector_id, id_tag, address, auth_status, "
        "auth_reason, reservation_id, meter_start, start_ts, start_epoch, offline_start, flags) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (charger_id, connector_id, id_tag, address, status, reason, reservation_id, meter_start,
         timestamp, start_epoch, int(offline), json.dumps(flags)))
    return cur.lastrowid, id_tag_info(wire_status(status))


def get_transaction(conn, transaction_id):
    if not in_int64(transaction_id):
        return None  # no row can have this id
    return conn.execute("SELECT * FROM ocpp_transactions WHERE id=?", (transaction_id,)).fetchone()


def list_transactions(conn, state=None, charger_id=None, limit=100):
    sql, args = "SELECT * FROM ocpp_transactions WHERE 1=1", []
    if state:
        sql += " AND state=?"
        args.append(state)
    if charger_id:
        sql += " AND charger_id=?"
        args.append(charger_id)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return conn.execute(sql, args).fetchall()
