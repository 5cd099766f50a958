"""Meter values: every sampled value stored as sent, SignedData verified on arrival.

Raw text is kept next to the parsed energy register (integer Wh), so a bill can
always be traced back to what the charger sent. Signed values (OCMF) count only
against the charger's registered meter key; their hash lets a replay into
another session be found.
"""
from decimal import Decimal, InvalidOperation

from eth_utils import keccak

from ocpp_cs.store.base import event, in_int64, parse_time
from ocpp_cs.store.chargers import get_charger
from ocpp_cs.store.transactions import get_transaction

# a register value with more digits than this is not energy; converting a hostile
# "1e1000000" to int would cost seconds of CPU per value (and hours for 1e10000000)
MAX_REGISTER_DIGITS = 18

def energy_wh_of(sampled):
    """An energy register sampled value → integer Wh (kWh converted), or None."""
    measurand = sampled.get("measurand", "Energy.Active.Import.Register")
    if measurand != "Energy.Active.Import.Register" or sampled.get("format") == "SignedData":
        return None
    unit = sampled.get("unit", "Wh")
    try:
        value = Decimal(sampled["value"])
    except (InvalidOperation, KeyError, TypeError):
        return None
    if not value.is_finite() or value.adjusted() >= MAX_REGISTER_DIGITS:
        return None
    if unit == "kWh":
        value *= 1000
    elif unit != "Wh":
        return None
    wh = int(value)  # floor toward zero: a register never bills a fraction of a Wh
    return wh if in_int64(wh) else None


def _verify_signed(value, meter_key, ocmf):
    """→ (state, detail, record or None). state: verified | invalid | unverifiable.

    Only the charger's registered meter key counts; a key sent inside the value
    (OCA wrapper) is a claim, and one that differs is noted in the detail.
    """
    try:
        text, claimed = ocmf.decode_ocpp_signed_data_full(value)
    except ValueError as e:
        return "invalid", f"undecodable SignedData: {e}", None
    note = ""
    if claimed is not None and (not meter_key or claimed.hex() != meter_key.lower()):
        note = "; key sent with the value is not the registered one"
    if not meter_key:
        try:
            return "unverifiable", "charger has no registered meter key" + note, ocmf.parse(text)
        except ValueError as e:
            return "invalid", f"{type(e).__name__}: {e}", None
    try:
        record = ocmf.verify(text, bytes.fromhex(meter_key))
    except ValueError as e:
        return "invalid", f"{type(e).__name__}: {e}" + note, None
    return "verified", note.lstrip("; "), record


def record_meter_values(conn, charger_id, connector_id, transaction_id, meter_value, source,
                        lenient=False):
    """Store every sampled value (raw text kept); verify SignedData on arrival.

    Returns the number of values stored. Values for a transaction that is not this
    charger's are stored unlinked and logged as a security event. A timestamp that
    is not RFC 3339 is refused, or with `lenient` stored as sent.
    """
    charger = get_charger(conn, charger_id)
    meter_key = charger["meter_key"] if charger else None
    if transaction_id is not None:
        tx = get_transaction(conn, transaction_id)
        if tx is None or tx["charger_id"] != charger_id:
            event(conn, charger_id, "security", what="meter values for a foreign transaction",
                  transaction_id=transaction_id)
            transaction_id = None
    n = 0
    for mv in meter_value:
        ts = mv["timestamp"]
        if not lenient:
            parse_time(ts)
        for sv in mv["sampledValue"]:
            verify_state = detail = record_hash = None
            signed_wh = signed_seq = None
            if sv.get("format") == "SignedData":
                from protocol import ocmf
                verify_state, detail, record = _verify_signed(sv["value"], meter_key, ocmf)
                record_hash = "0x" + keccak(sv["value"].encode()).hex()
                if record is not None:
                    signed_wh, signed_seq = record.import_wh, record.sequence
                if verify_state == "invalid":
                    event(conn, charger_id, "security", what="signed meter value rejected",
                          transaction_id=transaction_id, detail=detail)
            conn.execute(
                "INSERT INTO ocpp_meter_values(charger_id, connector_id, transaction_id, source, ts, "
                "context, format, measurand, phase, location, unit, value, wh, verify_state, "
                "verify_detail, record_hash, signed_import_wh, signed_seq) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (charger_id, connector_id, transaction_id, source, ts, sv.get("context"),
                 sv.get("format"), sv.get("measurand"), sv.get("phase"), sv.get("location"),
                 sv.get("unit"), sv["value"], energy_wh_of(sv), verify_state, detail,
                 record_hash, signed_wh, signed_seq))
            n += 1
    return n


def meter_values(conn, transaction_id):
    return conn.execute("SELECT * FROM ocpp_meter_values WHERE transaction_id=? ORDER BY id",
                        (transaction_id,)).fetchall()
