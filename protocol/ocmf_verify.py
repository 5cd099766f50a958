"""Parse and verify OCMF records on the gateway (CPython only).

Reached through protocol.ocmf (`from protocol.ocmf import parse, verify`), which
loads this module on first use so the device never compiles it.  What it
accepts, beyond what our own devices write, is what certified chargers really
send: RV as integer Wh, decimal or exponent kWh, even strings with padding; SE
hex or base64; SA absent (= ECDSA-secp256r1-SHA256); TM with any zone offset;
public keys as DER SubjectPublicKeyInfo in hex/base64/PEM or as raw SEC1.
What it refuses, with an OcmfError subclass saying why: anything that is not
exactly "OCMF|" + one JSON object + "|" + one JSON object, duplicate JSON keys
(two verifiers could read different values from one signed text), NaN, negative
or absurd registers, unknown signature algorithms/encodings, keys not on P-256.
`cryptography` is imported inside the functions that need it.
"""
import binascii

from protocol import p256
from protocol.ocmf import (
    MAX_RECORD_CHARS,
    MAX_WH,
    SA_P256,
    AlgorithmError,
    BadKeyError,
    JsonError,
    OcmfError,
    SignatureMismatch,
    StructureError,
)

MAX_BRACKETS = 800  # JSON nesting stays far below Python's recursion limit
MAX_SEQUENCE = 2 ** 63 - 1  # a pagination counter the store keeps as a SQLite INTEGER


class Record:
    """A parsed OCMF record.  Nothing is verified until verify() returns it.

    raw            the record text (surrounding whitespace stripped)
    payload_bytes  the exact signed bytes between "OCMF|" and the signature's "|"
    payload        decoded payload; JSON numbers with a fraction are decimal.Decimal
    signature      decoded signature section (dict)
    algorithm      SA, or the OCMF default ECDSA-secp256r1-SHA256 when absent
    signature_der  SD decoded per SE (hex or base64)
    pagination     PG as given ("F12", "T32") or None; sequence its number or None
    gateway_serial GS, meter_serial MS (or None)
    readings       RD with OCMF's inheritance applied: a field missing from a
                   reading takes the previous reading's value
    import_wh / export_wh  from the last reading of OBIS 1.8.0 / 2.8.0 (channel
                   any, billing period absent or 255), integer Wh; values finer
                   than 1 Wh are floored; None when there is no such reading
    time_epoch     the last reading's TM as UTC epoch seconds (fraction
                   dropped), time_status its status letter; None when absent
    """

    __slots__ = (
        "algorithm",
        "export_wh",
        "gateway_serial",
        "import_wh",
        "meter_serial",
        "pagination",
        "payload",
        "payload_bytes",
        "raw",
        "readings",
        "sequence",
        "signature",
        "signature_der",
        "time_epoch",
        "time_status",
    )

    def __repr__(self):
        return (f"<OCMF Record PG={self.pagination} MS={self.meter_serial} "
                f"import_wh={self.import_wh} export_wh={self.export_wh}>")


def _short(value):
    """repr for an error message, cut so hostile input cannot flood the logs."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_text(value, what):
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StructureError(f"{what} is not UTF-8 text ({exc})") from None
    if isinstance(value, str):
        return value
    raise StructureError(f"{what} must be str or bytes, not {type(value).__name__}")


def _reject_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            # two verifiers could read different values from one signed text
            raise JsonError(f"duplicate key {_short(key)} in JSON object")
        obj[key] = value
    return obj


def _reject_constant(name):
    raise JsonError(f"{name} is not a JSON number")


def _decoder():
    import decimal
    import json
    return json.JSONDecoder(parse_float=decimal.Decimal, parse_constant=_reject_constant,
                            object_pairs_hook=_reject_duplicates)


def _json_error(section, exc):
    if isinstance(exc, OcmfError):
        return exc
    if isinstance(exc, RecursionError):
        return JsonError(f"{section} JSON is nested too deeply")
    return JsonError(f"{section} is not valid JSON: {exc}")


def _opt_str(obj, key, where):
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise StructureError(f"{where} field {key} must be a string, got {_short(value)}")
    return value


def _decode_sd(signature):
    import base64
    sd = signature.get("SD")
    if sd is None:
        raise StructureError("signature section has no SD (signature data)")
    if not isinstance(sd, str) or not sd:
        raise StructureError("signature SD must be a non-empty string")
    se = _opt_str(signature, "SE", "signature")
    sm = _opt_str(signature, "SM", "signature")
    if sm is not None and sm.lower() != "application/x-der":
        raise AlgorithmError(f"signature mime type SM={_short(sm)} is not supported "
                             "(only application/x-der)")
    encoding = "hex" if se is None else se.lower()
    try:
        if encoding == "hex":
            der = bytes.fromhex(sd)
        elif encoding == "base64":
            der = base64.b64decode(sd.encode("ascii"), validate=True)
        else:
            raise AlgorithmError(f"signature encoding SE={_short(se)} is not supported "
                                 "(hex or base64)")
    except (ValueError, binascii.Error) as exc:
        if isinstance(exc, OcmfError):
            raise
        raise StructureError(f"signature SD is not valid {encoding}") from None
    return der


def _obis_register(ri):
    """1 (import) or 2 (export) when RI names the total active energy register 1.8.0/2.8.0."""
    import re
    m = re.fullmatch(r" *0*1-(?:\d+|[a-zA-Z]):0*([12])\.0*8\.0+(?:[.*](?:0*255|[fF][fF]))? *",
                     ri, re.ASCII)
    return int(m.group(1)) if m else None


_RV_TEXT = r" *[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)? *"


def value_to_wh(rv, ru):
    """An RV/RU pair as integer Wh (floored below 1 Wh); StructureError if unusable."""
    import decimal
    import re
    if isinstance(rv, bool) or rv is None:
        raise StructureError(f"reading value RV {_short(rv)} is not a number")
    if isinstance(rv, str):
        if not re.fullmatch(_RV_TEXT, rv, re.ASCII):
            raise StructureError(f"reading value RV {_short(rv)} is not a number")
        rv = decimal.Decimal(rv.strip())
    elif isinstance(rv, int):
        rv = decimal.Decimal(rv)
    elif not isinstance(rv, decimal.Decimal):
        raise StructureError(f"reading value RV {_short(rv)} is not a number")
    if not rv.is_finite() or rv.adjusted() > 20:
        raise StructureError(f"reading value RV {rv} is out of range")
    unit = ru.strip().lower() if isinstance(ru, str) else None
    if unit == "kwh":
        scale = 1000
    elif unit == "wh":
        scale = 1
    else:
        raise StructureError(f"reading unit RU {_short(ru)} is not an energy unit (kWh or Wh)")
    if rv.is_signed() and rv != 0:
        raise StructureError(f"energy register RV {rv} is negative")
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        wh = int((rv * scale).to_integral_value(rounding=decimal.ROUND_FLOOR))
    if wh > MAX_WH:
        raise StructureError(f"energy register RV {rv} {ru} is out of range")
    return wh


def _parse_time(tm):
    """(epoch seconds, status letter or None) of an OCMF TM string."""
    import calendar
    import datetime
    import re
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[,.](\d{1,9}))?"
                     r"(Z|[+-]\d{2}:?\d{2})(?: ([A-Z]))?", tm.strip(" "), re.ASCII)
    if not m:
        raise StructureError(f"reading time TM {_short(tm)} is not in OCMF format "
                             "YYYY-MM-DDThh:mm:ss,fff+zzzz S")
    try:
        stamp = datetime.datetime(*(int(m.group(i)) for i in range(1, 7)))
    except ValueError as exc:
        raise StructureError(f"reading time TM {_short(tm)} is not a valid date: {exc}") from None
    zone = m.group(8)
    offset = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        hh, mm = int(digits[:2]), int(digits[2:])
        if hh > 23 or mm > 59:
            raise StructureError(f"reading time TM {_short(tm)} has an invalid zone offset")
        offset = (hh * 3600 + mm * 60) * (-1 if zone[0] == "-" else 1)
    return calendar.timegm(stamp.timetuple()) - offset, m.group(9)


def _readings(payload):
    rd = payload.get("RD")
    if rd is None:
        raise StructureError("payload has no readings (RD)")
    if not isinstance(rd, list) or not rd:
        raise StructureError("payload RD must be a non-empty list of readings")
    effective = []
    previous = {}
    for i, reading in enumerate(rd):
        if not isinstance(reading, dict):
            raise StructureError(f"reading {i} in RD is not a JSON object")
        merged = dict(previous)
        merged.update(reading)
        for key in ("TM", "RI", "RU", "ST", "TX", "EF", "RT"):
            if key in merged and not isinstance(merged[key], str):
                raise StructureError(
                    f"reading {i} field {key} must be a string, got {_short(merged[key])}")
        effective.append(merged)
        previous = merged
    return effective


def parse(record):
    """Split and decode an OCMF record without verifying it (see Record).

    The payload is the JSON object that starts right after "OCMF|"; its end is
    found by decoding it, so "|" inside its strings is harmless.  What follows
    must be "|" and exactly one JSON object, the signature section.
    """
    if isinstance(record, Record):
        return record
    raw = _as_text(record, "record").strip()
    if len(raw) > MAX_RECORD_CHARS:
        raise StructureError(f"record is {len(raw)} characters, more than {MAX_RECORD_CHARS}")
    if not raw.startswith("OCMF|"):
        raise StructureError(f"record does not start with 'OCMF|' (got {raw[:12]!r})")
    brackets = raw.count("{") + raw.count("[")
    if brackets > MAX_BRACKETS:
        # bounds JSON nesting before the recursive decoder sees it
        raise StructureError(f"record has {brackets} brackets; an OCMF record has a few dozen")
    decoder = _decoder()
    try:
        payload, end = decoder.raw_decode(raw, 5)
    except (ValueError, RecursionError) as exc:
        raise _json_error("payload section", exc) from None
    if not isinstance(payload, dict):
        raise StructureError("payload section is not a JSON object")
    if raw[end:end + 1] != "|":
        raise StructureError(f"expected '|' after the payload JSON at character {end}, "
                             f"found {raw[end:end + 10]!r}")
    try:
        signature = decoder.decode(raw[end + 1:])
    except (ValueError, RecursionError) as exc:
        raise _json_error("signature section", exc) from None
    if not isinstance(signature, dict):
        raise StructureError("signature section is not a JSON object")
    try:
        payload_bytes = raw[5:end].encode("utf-8")
    except UnicodeEncodeError:
        raise StructureError("payload contains characters that are not valid UTF-8") from None

    rec = Record()
    rec.raw = raw
    rec.payload_bytes = payload_bytes
    rec.payload = payload
    rec.signature = signature
    sa = _opt_str(signature, "SA", "signature")
    rec.algorithm = SA_P256 if sa is None else sa
    rec.signature_der = _decode_sd(signature)
    if _is_p256(rec.algorithm) and p256.decode_signature(rec.signature_der) is None:
        raise StructureError("signature SD is not a DER ECDSA P-256 signature (SEQUENCE of r, s)")
    rec.pagination = _opt_str(payload, "PG", "payload")
    rec.sequence = None
    if rec.pagination is not None:
        pg = rec.pagination.strip()
        if len(pg) >= 2 and pg[0] in "TF" and pg[1:].isdigit() and pg[1:].isascii():
            digits = pg[1:].lstrip("0") or "0"
            # bounded before int(): CPython refuses > 4300 digits with a plain ValueError,
            # and the store keeps sequences as 64-bit SQLite integers
            if len(digits) > 19 or int(digits) > MAX_SEQUENCE:
                raise StructureError(f"pagination PG {_short(pg)} is out of range "
                                     "(at most 2**63 - 1)")
            rec.sequence = int(digits)
    rec.gateway_serial = _opt_str(payload, "GS", "payload")
    rec.meter_serial = _opt_str(payload, "MS", "payload")
    rec.readings = _readings(payload)
    rec.import_wh = rec.export_wh = None
    for reading in rec.readings:
        register = _obis_register(reading.get("RI", ""))
        if register is None:
            continue
        wh = value_to_wh(reading.get("RV"), reading.get("RU"))
        if register == 1:
            rec.import_wh = wh
        else:
            rec.export_wh = wh
    rec.time_epoch = rec.time_status = None
    tm = rec.readings[-1].get("TM")
    if tm is not None:
        rec.time_epoch, rec.time_status = _parse_time(tm)
    return rec


def _is_p256(algorithm):
    return algorithm.strip().upper() == SA_P256.upper()


def verify(record, public_key):
    """The parsed Record if its signature is valid for public_key; else an OcmfError."""
    rec = parse(record)
    if not _is_p256(rec.algorithm):
        raise AlgorithmError(f"signature algorithm SA={_short(rec.algorithm)} is not supported "
                             f"(only {SA_P256})")
    pub = load_public_key(public_key)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    try:
        key.verify(rec.signature_der, rec.payload_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureMismatch("signature does not match the payload under key "
                                f"{key_fingerprint(pub)} (PG {_short(rec.pagination)})") from None
    return rec


# ------------------------------------------------------------------ keys

def _hex_bytes(text):
    """bytes if text is hex (spaces, colons and a 0x prefix allowed), else None."""
    t = text.strip()
    if t[:2].lower() == "0x":
        t = t[2:]
    t = "".join(t.split()).replace(":", "")
    if not t or len(t) % 2 or any(c not in "0123456789abcdefABCDEF" for c in t):
        return None
    return bytes.fromhex(t)


def _point(data):
    """Validated 65-byte SEC1 key from raw point bytes (65, 33 compressed, 64 bare X||Y)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    if len(data) == 64:
        data = b"\x04" + data
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError:
        raise BadKeyError("public key bytes are not a point on P-256") from None
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def _from_der(data):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise BadKeyError("public key is neither a SEC1 point nor DER SubjectPublicKeyInfo "
                          f"({len(data)} bytes)") from None
    except UnsupportedAlgorithm as exc:  # e.g. a curve OpenSSL does not know
        raise BadKeyError(f"public key not supported: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BadKeyError(f"public key is {type(key).__name__}, not an EC key")
    if key.curve.name != "secp256r1":
        raise BadKeyError(f"public key is on {key.curve.name}, not secp256r1 (P-256)")
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def _key_from_bytes(data):
    n = len(data)
    if n == 64 or (n == 65 and data[0] == 4) or (n == 33 and data[0] in (2, 3)):
        return _point(data)
    return _from_der(data)


def load_public_key(key):
    """65-byte uncompressed SEC1 P-256 key from any common form; BadKeyError otherwise.

    Accepted: raw SEC1 bytes (uncompressed, compressed or bare X||Y), DER
    SubjectPublicKeyInfo bytes, and as text: hex of either (spaces allowed, as
    printed on charger labels), base64 of either, or PEM.
    """
    import base64
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
        if data[:1] in (b"\x02", b"\x03", b"\x04", b"\x30") or len(data) == 64:
            try:
                return _key_from_bytes(data)
            except BadKeyError:
                pass
        try:
            key = data.decode("ascii")
        except UnicodeDecodeError:
            raise BadKeyError("public key bytes are neither a key nor key text") from None
    if not isinstance(key, str):
        raise BadKeyError(f"public key must be str or bytes, not {type(key).__name__}")
    text = key.strip()
    if not text:
        raise BadKeyError("public key is empty")
    if len(text) > 10000:
        raise BadKeyError("public key text is too long")
    if text.startswith("-----BEGIN"):
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        try:
            der = serialization.load_pem_public_key(text.encode("ascii")).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise BadKeyError(f"PEM public key unreadable: {exc}") from None
        return _from_der(der)
    data = _hex_bytes(text)
    if data is None:
        try:
            data = base64.b64decode("".join(text.split()).encode("ascii"), validate=True)
        except (ValueError, binascii.Error):
            raise BadKeyError("public key text is neither hex, base64 nor PEM") from None
    if not data:
        raise BadKeyError("public key is empty")
    return _key_from_bytes(data)


def key_fingerprint(pub65):
    """Short label of a key: first 16 hex digits of SHA-256 over the 65-byte SEC1 form."""
    import hashlib
    return hashlib.sha256(load_public_key(pub65)).hexdigest()[:16]


# ------------------------------------------------------- OCPP 1.6 SignedData

def _oca_public_key(value):
    """The OCA wrapper's publicKey: base64 of "oca:base16:asn1:<hex>", of plain hex, or of DER."""
    import base64
    if not isinstance(value, str):
        raise BadKeyError("OCA publicKey must be a base64 string")
    try:
        data = base64.b64decode("".join(value.split()).encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        raise BadKeyError("OCA publicKey is not base64") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return load_public_key(data)
    if text.lower().startswith("oca:"):
        parts = text.split(":", 3)
        if len(parts) != 4:
            raise BadKeyError(f"OCA publicKey {text[:40]!r} is not oca:<encoding>:<type>:<key>")
        body = parts[3]
        if parts[1].lower() == "base16":
            body = "".join(c for c in body if c in "0123456789abcdefABCDEF")
        return load_public_key(body)
    return load_public_key(text)


def _unwrap(text, depth, want_key):
    import base64
    import json
    text = text.strip()
    if len(text) > 4 * MAX_RECORD_CHARS:
        raise StructureError(f"signed data is {len(text)} characters, too long for a record")
    if text.startswith("OCMF|"):
        return text, None
    if depth > 2:
        raise StructureError("signed data nested too deeply")
    if text.startswith("{"):
        try:
            obj = json.loads(text, object_pairs_hook=_reject_duplicates,
                             parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise _json_error("OCPP signed-data wrapper", exc) from None
        if not isinstance(obj, dict) or "signedMeterData" not in obj:
            raise StructureError("OCPP signed-data JSON has no signedMeterData")
        method = obj.get("encodingMethod")
        if method is not None and (not isinstance(method, str) or method.upper() != "OCMF"):
            raise StructureError(f"OCPP signed data encodingMethod is {_short(method)}, not OCMF")
        inner = obj["signedMeterData"]
        if not isinstance(inner, str):
            raise StructureError("OCPP signedMeterData must be a string")
        record, _ = _unwrap(inner, depth + 1, False)
        key = obj.get("publicKey") if want_key else None
        return record, (_oca_public_key(key) if key else None)
    data = _hex_bytes(text)
    if data is None:
        try:
            data = base64.b64decode("".join(text.split()).encode("ascii"), validate=True)
        except (ValueError, binascii.Error, UnicodeEncodeError):
            data = None
    if data:
        try:
            decoded = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            decoded = ""
        if decoded.startswith(("OCMF|", "{")):
            return _unwrap(decoded, depth + 1, want_key)
    raise StructureError("not OCMF signed data: expected 'OCMF|...', its hex or base64 "
                         f"encoding, or the OCA JSON wrapper (got {text[:20]!r})")


def decode_ocpp_signed_data_full(value):
    """(OCMF record text, 65-byte public key or None) from an OCPP 1.6 SignedData value.

    OCPP 1.6 carries signed readings three ways: the OCMF string itself, its hex
    encoding (OCPP 1.5's "encoded as hex data"), or the OCA application note's
    JSON {"signedMeterData": base64, "signingMethod", "encodingMethod": "OCMF",
    "publicKey": base64?}.  A key sent alongside is only a claim: check it
    against the key registered for the device.
    """
    return _unwrap(_as_text(value, "signed data"), 0, True)


def decode_ocpp_signed_data(value):
    """The OCMF record text inside an OCPP 1.6 SignedData value (see the _full variant)."""
    return _unwrap(_as_text(value, "signed data"), 0, False)[0]
