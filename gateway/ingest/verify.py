"""Signature and structure check of one OCMF reading: the expensive, pure step of
ingest, run inline or in the worker processes of gateway/ingest/pool.py.

`verify_one(raw, pub65)` answers ("ok", seq, import_wh, export_wh, time, status,
serial) or ("reject", reason, detail, seq); it touches no database, so a worker
needs nothing but the record and the device's registered public key.
"""
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ECDSA-secp256r1-SHA256"
# A sequence must fit SQLite's INTEGER: a larger one would fail an INSERT (reading
# or quarantine) and roll back the whole batch every time the device replays it.
MAX_SEQ = 2 ** 63 - 1

_KEYS = {}
_ECDSA = ec.ECDSA(hashes.SHA256())


def _key(pub65):
    k = _KEYS.get(pub65)
    if k is None:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        k = _KEYS[pub65] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub65)
    return k


# Our devices' exact layout (protocol.ocmf.build_payload): compact, fixed key order,
# strings without escapes. A record matching it entirely has one unambiguous
# reading, so its fields can be taken from the match instead of a general JSON
# parse, which costs as much as the signature check itself; anything else (other
# chargers' variants, escapes, whitespace) goes through protocol.ocmf.parse.
# tests/gateway/test_gateway_ingest.py checks both paths agree.
_S = r'"([^"\\\x00-\x1f\x7f|]*)"'
_KWH = r'(0|[1-9][0-9]{0,14})\.([0-9]{3})'
_FAST = re.compile(
    r'OCMF\|(\{"FV":"1\.0","GI":' + _S + ',"GS":' + _S + ',"GV":' + _S
    + r',"PG":"F(0|[1-9][0-9]{0,17})","MV":' + _S + ',"MM":' + _S + ',"MS":' + _S
    + r',"RD":\[\{"TM":"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2}),000\+0000 ([UISR])"'
    + ',"RV":' + _KWH + r',"RI":"1-0:1\.8\.0","RU":"kWh","RT":"AC","EF":"[Et]{0,2}","ST":"[A-Z]"\}'
    + r',\{"RV":' + _KWH + r',"RI":"1-0:2\.8\.0","RU":"kWh"\}\]\})'
    + r'\|\{"SA":"ECDSA-secp256r1-SHA256","SD":"([0-9A-Fa-f]{16,300})"\}')
_MDAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def fast_parse(raw):
    """(payload_bytes, der, seq, import_wh, export_wh, time_epoch, time_status, meter_serial)
    for a record in our devices' exact layout, else None."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        return None
    m = _FAST.fullmatch(text)
    if m is None:
        return None
    (payload, _gi, _gs, _gv, seq, _mv, _mm, serial, y, mo, d, hh, mi, ss, tstatus,
     i_kwh, i_frac, e_kwh, e_frac, sd) = m.groups()
    y, mo, d, hh, mi, ss = int(y), int(mo), int(d), int(hh), int(mi), int(ss)
    if not (1 <= mo <= 12 and 1 <= d <= _MDAYS[mo - 1] and hh < 24 and mi < 60 and ss < 60):
        return None
    if mo == 2 and d == 29 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        return None
    if len(sd) % 2:
        return None
    t = _days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss
    return (payload.encode("utf-8"), bytes.fromhex(sd), int(seq), int(i_kwh) * 1000 + int(i_frac),
            int(e_kwh) * 1000 + int(e_frac), t, tstatus, serial)


def general_parse(raw):
    """The same fields through protocol.ocmf.parse; ("reject", ...) on any problem."""
    from protocol import ocmf

    try:
        rec = ocmf.parse(raw)
    except ocmf.OcmfError as e:
        return ("reject", "malformed", str(e), None)
    except (ValueError, TypeError, UnicodeError, RecursionError) as e:  # parse promises OcmfError
        return ("reject", "malformed", f"{type(e).__name__}: {e}", None)
    seq = rec.sequence if isinstance(rec.sequence, int) and 0 <= rec.sequence <= MAX_SEQ else None
    if rec.algorithm.strip().upper() != ALGORITHM.upper():
        return ("reject", "bad_algorithm", f"signature algorithm {rec.algorithm!r}", seq)
    return (rec.payload_bytes, rec.signature_der, seq, rec.import_wh, rec.export_wh, rec.time_epoch,
            rec.time_status, rec.meter_serial, rec.pagination)


def verify_one(raw, pub65):
    """("ok", seq, import_wh, export_wh, time_epoch, time_status, meter_serial)
    or ("reject", reason, detail, seq_or_None)."""
    f = fast_parse(raw)
    if f is not None:
        pagination = "F"
    else:
        f = general_parse(raw)
        if f[0] == "reject":
            return f
        pagination = f[8] or ""
    payload, der, seq, imp, exp, t, tstatus, serial = f[:8]
    try:
        _key(pub65).verify(der, payload, _ECDSA)
    except InvalidSignature:
        return ("reject", "bad_signature", "signature does not verify with the registered key", seq)
    except ValueError as e:  # a key that cryptography refuses
        return ("reject", "bad_signature", f"registered key unusable: {e}", seq)
    problems = []
    if seq is None or not pagination.strip().startswith("F"):
        problems.append(f"pagination {pagination[:40]!r} is not a fiscal sequence F<n>, n <= 2**63 - 1")
    if not isinstance(imp, int) or not isinstance(exp, int):
        problems.append("import (1-0:1.8.0) and export (1-0:2.8.0) registers are both required")
    if not isinstance(t, int):
        problems.append("reading time missing or unreadable")
    if not serial:
        problems.append("meter serial (MS) missing")
    if problems:
        return ("reject", "malformed", "; ".join(problems), seq)
    return ("ok", seq, imp, exp, t, str(tstatus or "U"), str(serial))


def verify_batch(items):
    """[(raw, pub65)] -> results of `verify_one`; the unit of work for the process pool."""
    return [verify_one(raw, pub) for raw, pub in items]
