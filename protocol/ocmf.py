"""OCMF signed meter readings: built and signed on the device, parsed and verified on the gateway.

A reading leaves the device as an OCMF record, the format of German "Eichrecht"
chargers, so the gateway and third-party transparency software can check it:

    OCMF|{payload JSON}|{"SA":"ECDSA-secp256r1-SHA256","SD":"<DER signature, upper-case hex>"}

The signature covers the payload bytes exactly as sent, so nothing here ever
re-serialises a payload it did not write. The device side (below) runs on MicroPython
and CPython and gives the same bytes on both. The gateway side (`parse`, `verify`,
`Record`, ...: _GATEWAY) is importable from here but lives in protocol/ocmf_verify.py,
loaded on first use: compiling it under MicroPython would cost the device about 25 KB
of heap for code it never runs. Every failure there is an OcmfError subclass (defined
here) whose message says what is wrong.
"""
import binascii

from protocol import p256

SA_P256 = "ECDSA-secp256r1-SHA256"
OBIS_IMPORT = "1-0:1.8.0"
OBIS_EXPORT = "1-0:2.8.0"
TIME_STATUSES = "UISR"  # unknown, informative, synchronised, relative (OCMF table 19)
METER_STATUSES = "NGTDRMXIOSEF"  # OCMF table 10; G = good
ERROR_FLAGS = "Et"  # E energy, t time no longer usable
MAX_RECORD_CHARS = 100000
MAX_WH = 2 ** 63 - 1  # SQLite INTEGER


class OcmfError(ValueError):
    """Anything wrong with an OCMF record or key; the message says what."""


class StructureError(OcmfError):
    """Not of the shape OCMF|{payload}|{signature}, or a field of the wrong type."""


class JsonError(OcmfError):
    """A section is not valid JSON (or uses duplicate keys, NaN, ...)."""


class AlgorithmError(OcmfError):
    """Signature algorithm, encoding or mime type not supported."""


class BadKeyError(OcmfError):
    """Public key unreadable or not a P-256 point."""


class SignatureMismatch(OcmfError):
    """Well-formed record, but the signature does not match payload and key."""


# ---------------------------------------------------------------- device side
# The payload is written by hand, not with json.dumps: MicroPython and CPython disagree on
# separators and on escaping non-ASCII, and the same inputs must give the same bytes on
# both.  Energy is integer Wh, written as kWh with exactly three decimals by integer
# arithmetic (ESP32 floats are single precision: 98765.432 is not representable).  Time is
# "YYYY-MM-DDThh:mm:ss,fff+zzzz S" in UTC, from integer civil-from-days arithmetic, because
# the epoch of time.gmtime differs between ports.  Text fields may not contain "|" (OCMF
# forbids it inside sections) nor control characters; '"' and '\' are escaped.  The
# signature is protocol.p256 (RFC 6979), DER in upper-case hex, like the records of
# certified chargers.

def _check_int(value, what, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _civil_from_days(z):
    """(year, month, day) of day z since 1970-01-01 (H. Hinnant's algorithm)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return y, m, d


def format_time(epoch_seconds, status="S"):
    """OCMF time of a UTC epoch second: "2026-11-23T19:50:00,000+0000 S"."""
    _check_int(epoch_seconds, "epoch_seconds")
    if not isinstance(status, str) or len(status) != 1 or status not in TIME_STATUSES:
        raise ValueError(f"time status must be one of {TIME_STATUSES}, got {status!r}")
    days, secs = divmod(epoch_seconds, 86400)
    y, m, d = _civil_from_days(days)
    if y > 9999:
        raise ValueError(f"epoch_seconds {epoch_seconds} is after year 9999")
    hh, mi, ss = secs // 3600, secs // 60 % 60, secs % 60
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d},000+0000 {status}"


def wh_to_kwh_str(wh):
    """Integer Wh as kWh with exactly three decimals: 98765432 -> "98765.432"."""
    if isinstance(wh, bool) or not isinstance(wh, int):
        raise TypeError(f"energy must be an integer number of Wh, not {type(wh).__name__}")
    sign = "-" if wh < 0 else ""
    whole, frac = divmod(-wh if wh < 0 else wh, 1000)
    return f"{sign}{whole}.{frac:03d}"


def _jstr(value, what):
    """A JSON string literal, identical bytes on both interpreters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    for ch in value:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or ch == "|":
            raise ValueError(f"{what} contains a forbidden character {ch!r}")
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


# Payload layout (compact, no spaces, keys in this order):
#   {"FV":"1.0","GI":..,"GS":..,"GV":..,"PG":"F<seq>","MV":..,"MM":..,"MS":..,
#    "RD":[{"TM":..,"RV":<import kWh>,"RI":"1-0:1.8.0","RU":"kWh","RT":"AC","EF":..,"ST":..},
#          {"RV":<export kWh>,"RI":"1-0:2.8.0","RU":"kWh"}]}
# PG uses the fiscal context "F" (readings outside any charging transaction); per OCMF such
# records carry no user-assignment group (IS/IL/IF/IT/ID) and no TX.  OCMF omits, in a later
# reading, fields equal to the previous one, so the export reading carries only RV and the
# RI/RU group.
def build_payload(seq, import_wh, export_wh, epoch_seconds, *, gi, gs, gv, mv, mm, ms,
                  time_status="S", meter_status="G", errors=None):
    """The payload bytes of one fiscal reading (layout in the comment above)."""
    _check_int(seq, "seq")
    _check_int(import_wh, "import_wh")
    _check_int(export_wh, "export_wh")
    if import_wh > MAX_WH or export_wh > MAX_WH:
        raise ValueError("energy register out of range")
    if not isinstance(meter_status, str) or len(meter_status) != 1 \
            or meter_status not in METER_STATUSES:
        raise ValueError(f"meter status must be one of {METER_STATUSES}, got {meter_status!r}")
    if errors is None:
        errors = ""
    if not isinstance(errors, str) or len(errors) > 2 \
            or any(c not in ERROR_FLAGS for c in errors):
        raise ValueError(f"errors must be a string of the OCMF flags E and t, got {errors!r}")
    tm = format_time(epoch_seconds, time_status)
    text = "".join((
        '{"FV":"1.0","GI":', _jstr(gi, "gi"), ',"GS":', _jstr(gs, "gs"),
        ',"GV":', _jstr(gv, "gv"), f',"PG":"F{seq}"',
        ',"MV":', _jstr(mv, "mv"), ',"MM":', _jstr(mm, "mm"), ',"MS":', _jstr(ms, "ms"),
        ',"RD":[{"TM":"', tm, '","RV":', wh_to_kwh_str(import_wh),
        ',"RI":"', OBIS_IMPORT, '","RU":"kWh","RT":"AC","EF":"', errors,
        '","ST":"', meter_status, '"},{"RV":', wh_to_kwh_str(export_wh),
        ',"RI":"', OBIS_EXPORT, '","RU":"kWh"}]}',
    ))
    return text.encode("utf-8")


def sign_record(payload, secret):
    """The full record "OCMF|<payload>|{"SA":..,"SD":"<upper-case hex DER>"}"."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError("payload must be bytes")
    payload = bytes(payload)
    der = p256.sign(secret, payload)
    sd = binascii.hexlify(der).decode().upper()
    return "OCMF|" + payload.decode("utf-8") + '|{"SA":"' + SA_P256 + '","SD":"' + sd + '"}'


def build(secret, seq, import_wh, export_wh, epoch_seconds, **meta):
    """build_payload + sign_record: one signed fiscal reading."""
    return sign_record(build_payload(seq, import_wh, export_wh, epoch_seconds, **meta), secret)


# ------------------------------------------------- gateway side, loaded lazily

_GATEWAY = ("Record", "parse", "verify", "load_public_key", "key_fingerprint",
            "decode_ocpp_signed_data", "decode_ocpp_signed_data_full", "value_to_wh")


def __getattr__(name):
    """`from protocol.ocmf import parse` works on CPython (PEP 562) without the device paying."""
    if name in _GATEWAY:
        import sys
        if sys.implementation.name == "micropython":
            raise AttributeError(f"protocol.ocmf.{name} is gateway-side (CPython) only")
        from protocol import ocmf_verify
        return getattr(ocmf_verify, name)
    raise AttributeError(f"module 'protocol.ocmf' has no attribute {name!r}")
