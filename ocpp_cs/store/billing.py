"""Billing: StopTransaction, what a stopped session bills, and its settlement, once.

A StopTransaction is answered every time, but a transaction leaves `active` once:
later copies change nothing. A stop the charger would otherwise retry and drop is
kept and held for review. A session whose charger went away is force-closed by the
operator (`force_close`): stopped at the last meter value received, settled the same way. Settling writes, in the caller's transaction, the
balance-book entries, the ledger outbox intent and the session's state, so they
land together or not at all; a session that cannot be billed is held for review,
never lost. Amounts: EEA columns are TEXT holding decimal integers (a session can
cost more than SQLite's 2**63 − 1 base units); energy is integer Wh.
"""
import json

from eth_utils import keccak

from gateway import accounts
from gateway.accounts import BalanceError
from gateway.ledger import outbox
from ocpp_cs.store.base import StoreError, event, in_int64, now, parse_time
from ocpp_cs.store.chargers import get_charger
from ocpp_cs.store.id_tags import authorize, id_tag_info, wire_status
from ocpp_cs.store.metering import meter_values, record_meter_values
from ocpp_cs.store.transactions import get_transaction

SESSION_REASON = "ocpp_session"

def assess(tx, values, charger, settings, replayed_from=None):
    """Decide what a stopped transaction bills: → (energy_wh, source, reasons, notes).

    Non-empty `reasons` hold the session for review. The rules:
      * signed values (SignedData) verified against the charger's meter key are
        what is billed: end − begin register of the first and last verified record;
      * a charger with a registered meter key must send them (missing → review),
        and any signed value that fails verification holds the session;
      * unsigned: meterStop − meterStart, refused when negative, above
        max_session_wh (a lifetime register value in one of them), above what the
        charger's rated power (its max_power_w, else the config's) delivers in
        the session's duration (signed too), or when the energy
        registers in MeterValues disagree with meterStart..meterStop (kWh/Wh mix-up).
    """
    reasons, notes = [], []
    meter_start, meter_stop = tx["meter_start"], tx["meter_stop"]
    unsigned = meter_stop - meter_start
    signed = [v for v in values if v["format"] == "SignedData"]
    verified = [v for v in signed if v["verify_state"] == "verified"]
    bad = [v for v in signed if v["verify_state"] != "verified"]
    if bad:
        reasons.append(f"{len(bad)} signed meter value(s) failed verification: "
                       f"{bad[0]['verify_detail']}")
    if replayed_from:
        reasons.append(f"signed record replayed from transaction {replayed_from}")
    energy, source = unsigned, "meter_stop"
    if charger["meter_key"] and not signed:
        reasons.append("signed meter values missing (charger has a registered meter key)")
    if verified and not bad:
        ordered = sorted(verified, key=lambda v: (v["signed_seq"] is None, v["signed_seq"] or 0,
                                                  v["id"]))
        begin, end = ordered[0], ordered[-1]
        if begin["record_hash"] == end["record_hash"]:
            reasons.append("only one signed reading: no verified begin and end")
        elif begin["signed_import_wh"] is None or end["signed_import_wh"] is None:
            reasons.append("signed readings carry no import register")
        else:
            energy, source = end["signed_import_wh"] - begin["signed_import_wh"], "signed"
            if abs(energy - unsigned) > max(10, abs(energy) // 100):
                notes.append(f"meterStop-meterStart {unsigned} Wh differs from signed {energy} Wh")
    if energy < 0:
        reasons.append(f"negative energy {energy} Wh")
    if energy > settings.max_session_wh:
        reasons.append(f"implausible energy {energy} Wh > {settings.max_session_wh} Wh "
                       "(lifetime register value?)")
    duration = (tx["stop_epoch"] or 0) - tx["start_epoch"]
    power = charger["max_power_w"] or settings.max_power_w   # its rating, else the config's
    if energy > 0 and duration <= 0:
        reasons.append("transaction stops before it starts")
    elif energy > power * duration / 3600 + 10:
        reasons.append(f"{energy} Wh in {duration:.0f} s exceeds {power} W")
    tol = max(10, abs(unsigned) // 100)
    for v in values:
        wh = v["wh"]
        if wh is None:
            continue
        if meter_start - tol <= wh <= meter_stop + tol:
            continue
        if v["unit"] in (None, "Wh") and meter_start - tol <= wh * 1000 <= meter_stop + tol:
            reasons.append(f"energy register {v['value']} labelled Wh looks like kWh")
        elif v["unit"] == "kWh" and meter_start - tol <= wh // 1000 <= meter_stop + tol:
            reasons.append(f"energy register {v['value']} labelled kWh looks like Wh")
        else:
            reasons.append(f"energy register {wh} Wh outside meterStart..meterStop")
        break
    return energy, source, reasons, notes


def stop_transaction(conn, charger_id, transaction_id, meter_stop, timestamp, settings,
                     price_source, reason=None, id_tag=None, transaction_data=None):
    """Record a stop and settle at most once. → idTagInfo dict or None.

    Always answerable: a stop the charger would otherwise retry and finally drop
    (unreadable timestamp, malformed transactionData) is kept and held for review.
    """
    hold = None
    try:
        stop_epoch = parse_time(timestamp)
    except StoreError as e:
        stop_epoch, hold = now(), f"StopTransaction timestamp unreadable ({e})"
    raw_meter_stop = meter_stop
    if not in_int64(meter_stop):
        # kept out of the INTEGER column (it cannot hold it) but never dropped: held for review
        meter_stop = None
        hold = "; ".join(filter(None, [
            hold, f"meterStop {str(raw_meter_stop)[:40]} is out of range (64-bit integer)"]))
    tx = get_transaction(conn, transaction_id)
    if tx is None or tx["charger_id"] != charger_id:
        event(conn, charger_id, "security" if tx is not None else "unknown_transaction",
              what="StopTransaction for an unknown or foreign transaction",
              transaction_id=transaction_id, meter_stop=meter_stop, timestamp=timestamp)
        return None
    info = None
    if id_tag is not None:
        status = "Accepted" if id_tag.upper() == tx["id_tag"].upper() else \
            authorize(conn, id_tag, settings, charger_id)[0]
        info = id_tag_info(wire_status(status))
    if tx["state"] != "active":
        if FORCE_CLOSED in json.loads(tx["flags"]):
            # closed by the operator while the charger was away: its stop is kept as an
            # event for the record, the bill stays as it was
            event(conn, charger_id, "stop_after_force_close", transaction_id=transaction_id,
                  meter_stop=str(raw_meter_stop)[:40], timestamp=timestamp, reason=reason)
            return info
        if (tx["meter_stop"], tx["stop_ts"]) != (meter_stop, timestamp):
            event(conn, charger_id, "stop_replay_differs", transaction_id=transaction_id,
                  first=[tx["meter_stop"], tx["stop_ts"]],
                  now=[str(raw_meter_stop)[:40] if meter_stop is None else meter_stop, timestamp])
        return info
    if transaction_data:
        conn.execute("SAVEPOINT ocpp_tx_data")
        try:
            record_meter_values(conn, charger_id, tx["connector_id"], transaction_id,
                                transaction_data, "StopTransaction", lenient=True)
        except (StoreError, ArithmeticError) as e:  # ArithmeticError: OverflowError …
            # the stop itself must still be recorded: its values are dropped, the session held
            conn.execute("ROLLBACK TO ocpp_tx_data")
            hold = f"transactionData unreadable ({type(e).__name__}: {str(e)[:200]})"
        conn.execute("RELEASE ocpp_tx_data")
    conn.execute(
        "UPDATE ocpp_transactions SET meter_stop=?, stop_ts=?, stop_epoch=?, stop_reason=?, "
        "stop_id_tag=?, stopped_at=? WHERE id=?",
        (meter_stop, timestamp, stop_epoch, reason, id_tag, now(), transaction_id))
    if meter_stop is None:
        conn.execute("UPDATE ocpp_transactions SET state='review', review_reason=? WHERE id=?",
                     (hold, transaction_id))
        event(conn, charger_id, "session_review", transaction_id=transaction_id, reasons=[hold])
        return info
    settle(conn, transaction_id, settings, price_source, hold=hold)
    return info


def _replayed_from(conn, tx_id, values):
    hashes = [v["record_hash"] for v in values
              if v["record_hash"] and v["verify_state"] == "verified"]
    if not hashes:
        return None
    marks = ",".join("?" * len(hashes))
    row = conn.execute(
        f"SELECT transaction_id FROM ocpp_meter_values WHERE record_hash IN ({marks}) "
        "AND transaction_id IS NOT NULL AND transaction_id != ? LIMIT 1",
        (*hashes, tx_id)).fetchone()
    return row[0] if row else None


def records_hash(tx, values):
    facts = {
        "charger": tx["charger_id"], "transaction": tx["id"], "connector": tx["connector_id"],
        "meter_start": tx["meter_start"], "meter_stop": tx["meter_stop"],
        "start": tx["start_ts"], "stop": tx["stop_ts"],
        "signed": [v["value"] for v in values if v["format"] == "SignedData"],
    }
    return "0x" + keccak(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hex()


def settle(conn, transaction_id, settings, price_source, energy_override=None, note="",
           hold=None):
    """Bill a stopped transaction, or hold it for review. Exactly once per transaction.

    In one transaction: the balance-book entries (EV pays energy + fee; the pool
    receives the energy payment, the station owner the fee; the pool's WATT for
    the energy is burned), the ledger outbox intent under
    settlement_id(chargeBoxId, transactionId), and the session's state.
    `energy_override` is the operator's reviewed figure (`egs-gw session settle`).
    """
    tx = get_transaction(conn, transaction_id)
    if tx is None:
        raise StoreError(f"unknown transaction {transaction_id}")
    if tx["state"] == "settled":
        return "settled"
    if tx["state"] == "void":
        raise StoreError(f"transaction {transaction_id} was voided")
    if tx["stopped_at"] is None:
        raise StoreError(f"transaction {transaction_id} has not stopped")
    if tx["meter_stop"] is None and energy_override is None:
        raise StoreError(f"transaction {transaction_id} has no usable meterStop: "
                         "settle it with the reviewed energy")
    charger = get_charger(conn, tx["charger_id"])
    values = meter_values(conn, transaction_id)
    flags = json.loads(tx["flags"])
    if energy_override is None:
        energy, source, reasons, notes = assess(tx, values, charger, settings,
                                                _replayed_from(conn, transaction_id, values))
        if hold:
            reasons.append(hold)
        if tx["address"] is None:
            reasons.append(f"idTag {tx['id_tag']} has no account")
        elif tx["auth_status"] != "Accepted" and energy > 0:
            reasons.append(f"started with idTag status {tx['auth_status']}"
                           + (f" ({tx['auth_reason']})" if tx["auth_reason"] else ""))
    else:
        energy, source, reasons, notes = int(energy_override), "operator", [], [note]
        if energy < 0:
            raise StoreError("energy must not be negative")
        if tx["address"] is None:
            raise StoreError(f"idTag {tx['id_tag']} has no account: register it first")
    signed_rows = [v for v in values if v["verify_state"] == "verified"]
    begin = min((v["signed_import_wh"] for v in signed_rows
                 if v["signed_import_wh"] is not None), default=None)
    end = max((v["signed_import_wh"] for v in signed_rows
               if v["signed_import_wh"] is not None), default=None)
    for n in notes:
        if n and n not in flags:
            flags.append(n)
    if reasons:
        conn.execute(
            "UPDATE ocpp_transactions SET state='review', review_reason=?, energy_wh=?, "
            "energy_source=?, flags=?, signed_begin_wh=?, signed_end_wh=? WHERE id=?",
            ("; ".join(reasons), energy, source, json.dumps(flags), begin, end, transaction_id))
        event(conn, tx["charger_id"], "session_review", transaction_id=transaction_id,
              reasons=reasons)
        return "review"
    sid = outbox.settlement_id(tx["charger_id"], transaction_id)
    fee_rate = int(charger["fee_per_kwh"] or 0) if charger["owner"] else 0
    payer, pool = tx["address"], settings.energy_pool
    owner = charger["owner"] or pool
    price = energy_eea = fee_eea = 0
    if energy > 0:
        # the price source (a market buy) writes inside the same savepoint
        conn.execute("SAVEPOINT ocpp_settle")
        try:
            price = int(price_source(conn, tx, energy))
            if price < 0:
                raise ValueError(f"price source returned a negative price {price}")
            energy_eea = energy * price // 1000
            fee_eea = energy * fee_rate // 1000
            entries = [(payer, "EEA", -(energy_eea + fee_eea)), (pool, "EEA", energy_eea),
                       (owner, "EEA", fee_eea), (pool, "WATT", -energy)]
            accounts.post(conn, [e for e in entries if e[2] != 0], SESSION_REASON, sid)
            outbox.enqueue(conn, "session", sid, {
                "payer": payer, "pool": pool, "station_owner": owner, "energy_wh": energy,
                "energy_eea": energy_eea, "fee_eea": fee_eea,
                "records_hash": records_hash(tx, values)})
        except Exception as e:  # noqa: BLE001 — a session that cannot be billed is held, never lost
            # BalanceError: not enough EEA/WATT; OverflowError: an amount beyond 64 bits
            # in a component's table; anything else: the price source failed
            conn.execute("ROLLBACK TO ocpp_settle")
            conn.execute("RELEASE ocpp_settle")
            why = f"cannot settle: {e}" if isinstance(e, (BalanceError, OverflowError)) \
                else f"cannot settle: price source failed: {type(e).__name__}: {e}"
            conn.execute(
                "UPDATE ocpp_transactions SET state='review', review_reason=?, energy_wh=?, "
                "energy_source=?, flags=? WHERE id=?",
                (why, energy, source, json.dumps(flags), transaction_id))
            event(conn, tx["charger_id"], "session_review", transaction_id=transaction_id,
                  reasons=[why])
            return "review"
        conn.execute("RELEASE ocpp_settle")
    else:
        sid = None  # nothing delivered, nothing to move
    conn.execute(
        "UPDATE ocpp_transactions SET state='settled', review_reason='', energy_wh=?, "
        "energy_source=?, price_per_kwh=?, energy_eea=?, fee_eea=?, settlement_id=?, flags=?, "
        "signed_begin_wh=?, signed_end_wh=?, settled_at=? WHERE id=?",
        (energy, source, str(price), str(energy_eea), str(fee_eea), sid, json.dumps(flags),
         begin, end, now(), transaction_id))
    event(conn, tx["charger_id"], "session_settled", transaction_id=transaction_id,
          energy_wh=energy, energy_eea=str(energy_eea), fee_eea=str(fee_eea), settlement_id=sid)
    return "settled"


FORCE_CLOSED = "force_closed"


def last_register(conn, tx):
    """→ (Wh, timestamp) of the last energy register received for an active transaction
    (a MeterValues sample, in arrival order), or its meterStart and start when none."""
    for row in conn.execute(
            "SELECT wh, ts FROM ocpp_meter_values WHERE transaction_id=? AND wh IS NOT NULL "
            "ORDER BY id DESC", (tx["id"],)):
        try:
            parse_time(row["ts"])
        except StoreError:
            continue
        return row["wh"], row["ts"]
    return tx["meter_start"], tx["start_ts"]


def force_close(conn, transaction_id, note, settings, price_source):
    """Close an active session its charger never stopped (it went away): stopped at the
    last energy register received, flagged `force_closed` with the note, then settled as
    a StopTransaction would be (once; held for review by the same rules). A StopTransaction
    the charger sends for it later is answered and changes nothing. → 'settled' | 'review'.
    """
    note = (note or "").strip()
    if not note:
        raise StoreError("a note is required: why the session is closed by hand")
    tx = get_transaction(conn, transaction_id)
    if tx is None:
        raise StoreError(f"unknown transaction {transaction_id}")
    if tx["state"] != "active":
        raise StoreError(f"transaction {transaction_id} is {tx['state']}, not active")
    meter_stop, stop_ts = last_register(conn, tx)
    flags = json.loads(tx["flags"])
    flags += [FORCE_CLOSED, f"force-closed: {note}"]
    conn.execute(
        "UPDATE ocpp_transactions SET meter_stop=?, stop_ts=?, stop_epoch=?, stop_reason=?, "
        "stopped_at=?, flags=? WHERE id=?",
        (meter_stop, stop_ts, parse_time(stop_ts), "ForceClosed", now(), json.dumps(flags),
         transaction_id))
    event(conn, tx["charger_id"], "session_force_closed", transaction_id=transaction_id,
          meter_stop=meter_stop, stop=stop_ts, note=note)
    return settle(conn, transaction_id, settings, price_source)


def void(conn, transaction_id, note):
    tx = get_transaction(conn, transaction_id)
    if tx is None:
        raise StoreError(f"unknown transaction {transaction_id}")
    if tx["state"] != "review":
        raise StoreError(f"transaction {transaction_id} is {tx['state']}, not under review")
    conn.execute("UPDATE ocpp_transactions SET state='void', review_reason=? WHERE id=?",
                 (f"voided: {note}", transaction_id))
    event(conn, tx["charger_id"], "session_void", transaction_id=transaction_id, note=note)


def configured_price(price_per_kwh):
    """The price source when no market prices the session: one configured number.

    A price source is `f(conn, transaction_row, energy_wh) -> EEA base units per kWh`,
    called inside the settlement's transaction, so a market buy can record its
    own trade atomically with the session.
    """
    def price_source(conn, tx, energy_wh):
        return price_per_kwh
    return price_source
