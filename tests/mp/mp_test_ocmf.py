"""protocol.ocmf device side under MicroPython: the shared vectors, byte for byte.

Run: micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_ocmf.py
(from the repository root, MICROPYPATH containing it; tests/protocol/test_micropython.py does this).
The same vectors run under CPython in tests/protocol/test_ocmf.py, so both interpreters
must produce identical payloads and records (RFC 6979 signatures are deterministic).
"""
import json

from protocol import ocmf, p256

VECTORS = "tests/vectors/ocmf_build.json"
_V = None


def vectors():
    global _V
    if _V is None:
        with open(VECTORS) as f:
            _V = json.load(f)
    return _V


def _args(case):
    return case["seq"], case["import_wh"], case["export_wh"], case["epoch_seconds"]


def test_wh_to_kwh_vectors():
    for wh, text in vectors()["wh_to_kwh"]:
        assert ocmf.wh_to_kwh_str(wh) == text, (wh, ocmf.wh_to_kwh_str(wh), text)


def test_wh_to_kwh_edges():
    assert ocmf.wh_to_kwh_str(0) == "0.000"
    assert ocmf.wh_to_kwh_str(1) == "0.001"
    assert ocmf.wh_to_kwh_str(999) == "0.999"
    assert ocmf.wh_to_kwh_str(1000) == "1.000"
    assert ocmf.wh_to_kwh_str(98765432) == "98765.432"
    assert ocmf.wh_to_kwh_str(2 ** 40) == "1099511627.776"
    # well past single-precision float resolution: every Wh digit must survive
    assert ocmf.wh_to_kwh_str(16777217) == "16777.217"
    assert ocmf.wh_to_kwh_str(2 ** 63 - 1) == "9223372036854775.807"


def test_wh_to_kwh_rejects_non_integers():
    for bad in (1.0, "1000", None, True):
        try:
            ocmf.wh_to_kwh_str(bad)
        except TypeError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_format_time_vectors():
    for epoch, status, text in vectors()["format_time"]:
        assert ocmf.format_time(epoch, status) == text, (epoch, ocmf.format_time(epoch, status))


def test_format_time_every_month_end_of_2024():
    # 2024 is a leap year; last second of each month
    ends = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    t = 1704067200  # 2024-01-01T00:00:00Z
    for month, days in enumerate(ends, 1):
        t += days * 86400
        text = ocmf.format_time(t - 1)
        assert text == f"2024-{month:02d}-{days:02d}T23:59:59,000+0000 S", text


def test_format_time_rejects_bad_input():
    for args in ((-1, "S"), (0, "X"), (0, ""), (0, "SS"), (253402300800, "S"), (1.5, "S")):
        try:
            ocmf.format_time(*args)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {args!r}")


def test_build_payload_bytes_equal_vectors():
    for case in vectors()["build"]:
        payload = ocmf.build_payload(*_args(case), **case["meta"])
        assert isinstance(payload, bytes)
        assert payload == case["payload"].encode("utf-8"), (case["name"], payload)


def test_build_record_equals_vectors():
    v = vectors()
    secret = bytes.fromhex(v["secret"])
    for case in v["build"]:
        record = ocmf.build(secret, *_args(case), **case["meta"])
        assert record == case["record"], (case["name"], record)


def test_record_signature_verifies_with_p256():
    v = vectors()
    secret = bytes.fromhex(v["secret"])
    pub = bytes.fromhex(v["public_key"])
    assert p256.public_key(secret) == pub
    case = v["build"][1]
    record = ocmf.build(secret, *_args(case), **case["meta"])
    head, payload_sig = record[:5], record[5:]
    assert head == "OCMF|"
    cut = payload_sig.rindex("|")
    payload = payload_sig[:cut].encode()
    sig = json.loads(payload_sig[cut + 1:])
    assert sig["SA"] == "ECDSA-secp256r1-SHA256"
    der = bytes.fromhex(sig["SD"])
    assert sig["SD"] == sig["SD"].upper()
    assert p256.verify(pub, payload, der)
    assert not p256.verify(pub, payload.replace(b"98765.432", b"98765.433"), der)


def test_build_payload_rejects_bad_input():
    meta = vectors()["build"][0]["meta"]
    bad_calls = (
        ((-1, 0, 0, 0), {}),
        ((0, -1, 0, 0), {}),
        ((0, 0, -5, 0), {}),
        ((0, 1.5, 0, 0), {}),
        ((0, 0, 0, 0), {"meter_status": "Q"}),
        ((0, 0, 0, 0), {"time_status": "Z"}),
        ((0, 0, 0, 0), {"errors": "x"}),
        ((0, 0, 0, 0), {"gs": "a|b"}),
        ((0, 0, 0, 0), {"ms": "line\nbreak"}),
        ((0, 0, 0, 0), {"gi": 5}),
    )
    for args, extra in bad_calls:
        kw = dict(meta)
        kw.update(extra)
        try:
            ocmf.build_payload(*args, **kw)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {args!r} {extra!r}")


def test_gateway_side_stays_off_the_device():
    import sys
    try:
        ocmf.parse  # noqa: B018
    except AttributeError as exc:
        assert "CPython" in str(exc)
    else:
        raise AssertionError("ocmf.parse resolved under MicroPython")
    assert "protocol.ocmf_verify" not in sys.modules
    assert issubclass(ocmf.SignatureMismatch, ocmf.OcmfError)
    assert issubclass(ocmf.OcmfError, ValueError)
