"""protocol.ocmf on CPython: shared vectors, real charger records, variants, hostile input.

The same build vectors run under MicroPython in tests/mp/mp_test_ocmf.py; the
cross-interpreter test below also has MicroPython build records for random
inputs and compares them byte for byte with CPython's.
"""
import base64
import datetime
import decimal
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import ocmf, p256
from sim.services import micropython

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
BUILD = json.loads((VECTORS / "ocmf_build.json").read_text(encoding="utf-8"))
REAL = json.loads((VECTORS / "ocmf_real.json").read_text(encoding="utf-8"))
SECRET = bytes.fromhex(BUILD["secret"])
PUB = bytes.fromhex(BUILD["public_key"])
META = BUILD["build"][0]["meta"]

FUZZ = settings(max_examples=int(os.environ.get("OCMF_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def args(case):
    return case["seq"], case["import_wh"], case["export_wh"], case["epoch_seconds"]


# ------------------------------------------------------------ helpers for variants

_KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
_KEY_PUB65 = _KEY.public_key().public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint)


def signed(payload: str, *, sa=ocmf.SA_P256, se=None, sm=None, key=_KEY, sig_extra=None,
           spaced=False):
    """An OCMF record over `payload` signed by `cryptography` (an independent signer)."""
    der = key.sign(payload.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    sig = {}
    if sa is not None:
        sig["SA"] = sa
    if se is not None:
        sig["SE"] = se
    if sm is not None:
        sig["SM"] = sm
    sig["SD"] = base64.b64encode(der).decode() if se == "base64" else der.hex().upper()
    sig.update(sig_extra or {})
    sep = (", ", ": ") if spaced else (",", ":")
    return "OCMF|" + payload + "|" + json.dumps(sig, separators=sep)


def payload_with(readings, **top):
    body = {"FV": "1.0", "GI": "test", "GS": "gw1", "PG": "T5", "MS": "m1", **top,
            "RD": readings}
    return json.dumps(body, separators=(",", ":"))


# ------------------------------------------------------------------ build vectors

@pytest.mark.parametrize("wh,text", BUILD["wh_to_kwh"])
def test_wh_to_kwh_vectors(wh, text):
    assert ocmf.wh_to_kwh_str(wh) == text


@given(st.integers(min_value=-(2 ** 70), max_value=2 ** 70))
def test_wh_to_kwh_matches_decimal(wh):
    expected = str((decimal.Decimal(wh) / 1000).quantize(decimal.Decimal("0.001")))
    assert ocmf.wh_to_kwh_str(wh) == expected


@pytest.mark.parametrize("epoch,status,text", BUILD["format_time"])
def test_format_time_vectors(epoch, status, text):
    assert ocmf.format_time(epoch, status) == text


@given(st.integers(min_value=0, max_value=253402300799), st.sampled_from("UISR"))
def test_format_time_matches_datetime(epoch, status):
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    assert ocmf.format_time(epoch, status) == stamp.strftime("%Y-%m-%dT%H:%M:%S,000+0000 ") + status


@pytest.mark.parametrize("case", BUILD["build"], ids=[c["name"] for c in BUILD["build"]])
def test_build_vectors_byte_for_byte(case):
    payload = ocmf.build_payload(*args(case), **case["meta"])
    assert payload == case["payload"].encode("utf-8")
    assert ocmf.sign_record(payload, SECRET) == case["record"]
    assert ocmf.build(SECRET, *args(case), **case["meta"]) == case["record"]


@pytest.mark.parametrize("case", BUILD["build"], ids=[c["name"] for c in BUILD["build"]])
def test_build_vectors_verify_and_read_back(case):
    # the payload is plain JSON with the documented key order
    payload = json.loads(case["payload"])
    assert list(payload) == ["FV", "GI", "GS", "GV", "PG", "MV", "MM", "MS", "RD"]
    assert payload["PG"] == f"F{case['seq']}"
    assert [r["RI"] for r in payload["RD"]] == ["1-0:1.8.0", "1-0:2.8.0"]
    assert "IS" not in payload and "TX" not in payload["RD"][0]  # fiscal: no user assignment
    rec = ocmf.verify(case["record"], PUB)
    assert rec.payload_bytes == case["payload"].encode("utf-8")
    assert rec.sequence == case["seq"] and rec.pagination == f"F{case['seq']}"
    assert rec.import_wh == case["import_wh"] and rec.export_wh == case["export_wh"]
    assert rec.time_epoch == case["epoch_seconds"]
    assert rec.time_status == case["meta"].get("time_status", "S")
    assert rec.gateway_serial == case["meta"]["gs"] and rec.meter_serial == case["meta"]["ms"]
    assert rec.readings[1]["TM"] == rec.readings[0]["TM"]  # inherited per OCMF
    assert rec.readings[1]["ST"] == case["meta"].get("meter_status", "G")
    assert rec.signature["SD"] == rec.signature["SD"].upper()
    # an independent verifier agrees
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), PUB)
    key.verify(rec.signature_der, rec.payload_bytes, ec.ECDSA(hashes.SHA256()))


text_field = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="|\x7f",
                  exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(0, 2 ** 40), imp=st.integers(0, 2 ** 50), exp=st.integers(0, 2 ** 50),
       epoch=st.integers(0, 253402300799), status=st.sampled_from("UISR"),
       meter_status=st.sampled_from("NGTDRMXIOSEF"), errors=st.sampled_from(["", "E", "t", "Et"]),
       gi=text_field, gs=text_field, ms=text_field)
def test_build_parse_round_trip(seq, imp, exp, epoch, status, meter_status, errors, gi, gs, ms):
    record = ocmf.build(SECRET, seq, imp, exp, epoch, gi=gi, gs=gs, gv="1", mv="v", mm="m", ms=ms,
                        time_status=status, meter_status=meter_status, errors=errors)
    rec = ocmf.verify(record, PUB)
    assert (rec.sequence, rec.import_wh, rec.export_wh) == (seq, imp, exp)
    assert (rec.time_epoch, rec.time_status) == (epoch, status)
    assert (rec.payload["GI"], rec.gateway_serial, rec.meter_serial) == (gi, gs, ms)
    assert rec.readings[0]["ST"] == meter_status and rec.readings[0]["EF"] == errors


def test_build_rejects_bad_input():
    with pytest.raises(ValueError, match="seq"):
        ocmf.build_payload(-1, 0, 0, 0, **META)
    with pytest.raises(ValueError, match="import_wh"):
        ocmf.build_payload(1, -1, 0, 0, **META)
    with pytest.raises(TypeError, match="export_wh"):
        ocmf.build_payload(1, 0, 1.5, 0, **META)
    with pytest.raises(TypeError):
        ocmf.build_payload(1, True, 0, 0, **META)
    with pytest.raises(ValueError, match="forbidden character"):
        ocmf.build_payload(1, 0, 0, 0, **dict(META, gs="a|b"))
    with pytest.raises(ValueError, match="forbidden character"):
        ocmf.build_payload(1, 0, 0, 0, **dict(META, ms="a\nb"))
    with pytest.raises(ValueError, match="meter status"):
        ocmf.build_payload(1, 0, 0, 0, **dict(META, meter_status="OK"))
    with pytest.raises(ValueError, match="time status"):
        ocmf.build_payload(1, 0, 0, 0, **dict(META, time_status="Z"))
    with pytest.raises(ValueError, match="year 9999"):
        ocmf.format_time(253402300800)
    with pytest.raises(TypeError):
        ocmf.build_payload(1, 0, 0, 0, gi="x")  # meta missing


# ------------------------------------------------------- CPython vs MicroPython

_MP_BUILD = """
import json
from protocol import ocmf
with open(INPUT) as f:
    cases = json.load(f)
secret = bytes.fromhex(cases["secret"])
with open(OUTPUT, "wb") as out:
    for c in cases["cases"]:
        rec = ocmf.build(secret, c["seq"], c["imp"], c["exp"], c["epoch"], **c["meta"])
        out.write(rec.encode())
        out.write(b"\\n")
print("built", len(cases["cases"]))
"""


def test_micropython_builds_identical_records_for_random_inputs(tmp_path):
    rng = random.Random(20261123)

    def text():
        alphabet = "abcXYZ019 -_.:/\"\\äöü€✓"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    cases = []
    for _ in range(30):
        cases.append({
            "seq": rng.choice([0, 1, rng.randint(0, 2 ** 20), rng.randint(0, 2 ** 48)]),
            "imp": rng.choice([0, 999, 1000, rng.randint(0, 10 ** 6), rng.randint(0, 2 ** 62)]),
            "exp": rng.choice([0, 1, rng.randint(0, 10 ** 9)]),
            "epoch": rng.randint(0, 253402300799),
            "meta": {"gi": text(), "gs": text(), "gv": text(), "mv": text(), "mm": text(),
                     "ms": text(), "time_status": rng.choice("UISR"),
                     "meter_status": rng.choice("NGTDRMXIOSEF"),
                     "errors": rng.choice(["", "E", "t", "Et"])},
        })
    secret = p256.generate_secret()
    inp, out = tmp_path / "in.json", tmp_path / "out.txt"
    inp.write_text(json.dumps({"secret": secret.hex(), "cases": cases}), encoding="utf-8")
    script = tmp_path / "mp_build.py"
    script.write_text(f"INPUT = {str(inp)!r}\nOUTPUT = {str(out)!r}\n" + _MP_BUILD)
    proc = subprocess.run([micropython(), "-X", "heapsize=100K", str(script)], cwd=ROOT,
                          env=dict(os.environ, MICROPYPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mp_lines = out.read_bytes().split(b"\n")[:-1]
    assert len(mp_lines) == len(cases)
    pub = p256.public_key(secret)
    for case, mp_record in zip(cases, mp_lines, strict=True):
        cp_record = ocmf.build(secret, case["seq"], case["imp"], case["exp"], case["epoch"],
                               **case["meta"])
        assert mp_record == cp_record.encode("utf-8")
        rec = ocmf.verify(mp_record, pub)
        assert (rec.import_wh, rec.export_wh, rec.sequence) == (case["imp"], case["exp"],
                                                                case["seq"])


def test_importing_ocmf_loads_neither_gateway_code_nor_cryptography():
    code = ("import sys; import protocol.ocmf as o; "
            "assert 'protocol.ocmf_verify' not in sys.modules; "
            "assert not any(m.startswith('cryptography') for m in sys.modules); "
            "o.parse; assert 'protocol.ocmf_verify' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    with pytest.raises(AttributeError):
        ocmf.no_such_thing  # noqa: B018


# ------------------------------------------------------------ real charger records

@pytest.mark.parametrize("case", REAL["valid"], ids=[c["name"] for c in REAL["valid"]])
def test_real_record_verifies(case):
    rec = ocmf.verify(case["record"], case["public_key"])
    for name, value in case["expect"].items():
        assert getattr(rec, name) == value, name
    # the signed bytes are exactly the text between the separators, untouched
    assert case["record"].startswith("OCMF|" + rec.payload_bytes.decode() + "|")
    # also through the bytes interface and an already parsed Record
    assert ocmf.verify(case["record"].encode(), case["public_key"]).payload_bytes == \
        rec.payload_bytes
    assert ocmf.verify(ocmf.parse(case["record"]), ocmf.load_public_key(case["public_key"]))


@pytest.mark.parametrize("case", REAL["valid"], ids=[c["name"] for c in REAL["valid"]])
def test_real_record_any_one_character_change_fails(case):
    record, key = case["record"], ocmf.load_public_key(case["public_key"])
    rec = ocmf.parse(record)
    start = len("OCMF|")
    end = start + len(rec.payload_bytes.decode())
    changed = 0
    for i in range(start, end):
        original = record[i]
        replacement = "1" if original != "1" else "2"
        tampered = record[:i] + replacement + record[i + 1:]
        with pytest.raises(ocmf.OcmfError):
            ocmf.verify(tampered, key)
        changed += 1
    assert changed == len(rec.payload_bytes)  # ASCII records: every byte was tried
    # and in the signature data: any change of the decoded signature fails (a change of
    # letter case in hex, or of base64 padding bits, leaves the signature as it was)
    sd = rec.signature["SD"]
    pos = record.rindex(sd)
    for i in range(len(sd)):
        repl = "0" if sd[i] not in "0=" else "1"
        tampered = record[:pos + i] + repl + record[pos + i + 1:]
        try:
            same = ocmf.parse(tampered).signature_der == rec.signature_der
        except ocmf.OcmfError:
            continue
        if same:
            ocmf.verify(tampered, key)
        else:
            with pytest.raises(ocmf.SignatureMismatch):
                ocmf.verify(tampered, key)


def test_real_record_with_another_chargers_key_fails():
    a, b = REAL["valid"][0], REAL["valid"][1]
    with pytest.raises(ocmf.SignatureMismatch, match="does not match"):
        ocmf.verify(a["record"], b["public_key"])


@pytest.mark.parametrize("case", REAL["invalid"], ids=[c["name"] for c in REAL["invalid"]])
def test_real_invalid_records(case):
    with pytest.raises(getattr(ocmf, case["error"])):
        ocmf.verify(case["record"], case["public_key"])
    for name, value in case.get("expect_parse", {}).items():
        assert getattr(ocmf.parse(case["record"]), name) == value


def test_secp256k1_key_is_refused_with_a_clear_message():
    k1 = next(c for c in REAL["invalid"] if c["name"] == "nano_secp256k1")["public_key"]
    with pytest.raises(ocmf.BadKeyError, match="secp256k1"):
        ocmf.load_public_key(k1)


# --------------------------------------------------------------- variants we accept

@pytest.mark.parametrize("rv,ru,wh", [
    ("7753", "Wh", 7753),
    ("98765.432", "kWh", 98765432),
    ("1.2345E3", "kWh", 1234500),
    ("0.2596", "kWh", 259),  # finer than 1 Wh: floored
    ('"       3.988"', "kWh", 3988),
    ('"1.2345E3"', "kWh", 1234500),
    ('"5e-1"', "kWh", 500),
    ("2.5E+1", "Wh", 25),
    ("0", "kWh", 0),
    ("-0.0", "kWh", 0),
    ("12345678901234.567", "kWh", 12345678901234567),
    ("1000", "kwh", 1000000),
])
def test_rv_variants_give_exact_integer_wh(rv, ru, wh):
    text = (f'{{"PG":"T1","RD":[{{"TM":"2024-01-01T00:00:00,000+0000 S","RV":{rv},'
            f'"RI":"1-0:1.8.0","RU":"{ru}","ST":"G"}}]}}')
    rec = ocmf.verify(signed(text), _KEY_PUB65)
    assert rec.import_wh == wh and rec.export_wh is None
    assert rv.encode() in rec.payload_bytes  # the number is signed as written


def test_rv_written_in_exponent_notation_is_exact():
    for literal, wh in (("1.2345E3", 1234500), ("98765432E-3", 98765432), ("9.8765432e4", 98765432),
                        ("0.001", 1), ("1E0", 1000)):
        text = (f'{{"PG":"F1","RD":[{{"TM":"2024-01-01T00:00:00,000+0000 S","RV":{literal},'
                '"RI":"1-0:2.8.0","RU":"kWh","ST":"G"}]}')
        rec = ocmf.verify(signed(text), _KEY_PUB65)
        assert rec.export_wh == wh and rec.import_wh is None, literal
        assert (f"{literal}").encode() in rec.payload_bytes


def test_obis_forms():
    forms = {"1-0:1.8.0": 1, "1-b:1.8.0": 1, "01-00:01.08.00.FF": 1, "1-0:1.8.0*255": 1,
             "1-0:2.8.0.255": 2, "1-1:2.8.0": 2, "1-0:1.8.1": None, "1-0:1.8.0*198": None,
             "1-0:98.8.0.FF": None, "1-0:1.7.0": None, "0-0:1.8.0": None, "": None}
    for ri, register in forms.items():
        text = payload_with([{"TM": "2024-01-01T00:00:00,000+0100 S", "RV": 5, "RI": ri,
                              "RU": "Wh", "ST": "G"}])
        rec = ocmf.parse(signed(text))
        got = 1 if rec.import_wh == 5 else 2 if rec.export_wh == 5 else None
        assert got == register, ri


def test_readings_inherit_and_last_reading_wins():
    text = payload_with([
        {"TM": "2021-10-06T13:13:56,000+0200 R", "TX": "B", "RV": 57.584, "RI": "1-0:1.8.0",
         "RU": "kWh", "ST": "G"},
        {"RV": 4.405, "RI": "1-0:2.8.0", "RU": "kWh"},
        {"TM": "2021-10-06T13:15:13,500+0200 S", "TX": "E", "RV": 58.685, "RI": "1-0:1.8.0",
         "RU": "kWh"},
        {"RV": 4.406, "RI": "1-0:2.8.0"},
    ])
    rec = ocmf.verify(signed(text), _KEY_PUB65)
    assert (rec.import_wh, rec.export_wh) == (58685, 4406)
    assert rec.time_epoch == 1633518913 and rec.time_status == "S"
    assert rec.readings[1]["TM"] == "2021-10-06T13:13:56,000+0200 R"
    assert rec.readings[3]["RU"] == "kWh" and rec.readings[3]["TX"] == "E"
    assert rec.payload["RD"][3] == {"RV": decimal.Decimal("4.406"), "RI": "1-0:2.8.0"}


@pytest.mark.parametrize("tm,epoch,status", [
    ("2019-08-13T10:03:15,000+0000 I", 1565690595, "I"),
    ("2021-08-25T10:01:04,000+0200 S", 1629878464, "S"),
    ("2021-08-25T10:01:04.999-0130 U", 1629878464 + 12600, "U"),
    ("2021-08-25T08:01:04Z", 1629878464, None),
    ("2021-08-25T10:01:04+02:00 R", 1629878464, "R"),
])
def test_time_forms(tm, epoch, status):
    text = payload_with([{"TM": tm, "RV": 1, "RI": "1-0:1.8.0", "RU": "Wh", "ST": "G"}])
    rec = ocmf.parse(signed(text))
    assert (rec.time_epoch, rec.time_status) == (epoch, status)


def test_signature_section_variants():
    text = payload_with([{"TM": "2024-01-01T00:00:00,000+0000 S", "RV": 1, "RI": "1-0:1.8.0",
                          "RU": "Wh", "ST": "G"}])
    # one record, its hex SD in lower case (each signed() call draws a new random nonce,
    # so the SD must come from the same record it is substituted into)
    upper = signed(text)
    head, sd = upper.rsplit('"SD":"', 1)
    lower_hex = head + '"SD":"' + sd.lower()
    assert lower_hex != upper
    for record in (upper, signed(text, sa=None), signed(text, se="base64"),
                   signed(text, se="hex", sm="application/x-der"), signed(text, spaced=True),
                   signed(text, sig_extra={"XX": "vendor field"}), lower_hex):
        rec = ocmf.verify(record, _KEY_PUB65)
        assert rec.algorithm == ocmf.SA_P256
    # surrounding whitespace (as in XML containers) is ignored
    assert ocmf.verify("\n   " + signed(text) + "\n  ", _KEY_PUB65).import_wh == 1


def test_pipe_characters_inside_payload_strings():
    text = payload_with([{"TM": "2024-01-01T00:00:00,000+0000 S", "RV": 3, "RI": "1-0:1.8.0",
                          "RU": "Wh", "ST": "G"}], GI="a|b||c", XN="}|{\"SD\":\"00\"}|")
    record = signed(text)
    rec = ocmf.verify(record, _KEY_PUB65)
    assert rec.payload_bytes == text.encode() and rec.payload["GI"] == "a|b||c"


def test_whitespace_inside_payload_is_part_of_the_signed_bytes():
    text = ('{\n  "PG": "T9",\n  "RD": [ { "TM": "2024-01-01T00:00:00,000+0000 S", "RV": 9,'
            ' "RI": "1-0:1.8.0", "RU": "Wh", "ST": "G" } ]\n}')
    record = signed(text)
    assert ocmf.verify(record, _KEY_PUB65).payload_bytes == text.encode()
    with pytest.raises(ocmf.SignatureMismatch):
        ocmf.verify(record.replace('"T9",\n', '"T9",\n ', 1), _KEY_PUB65)


def test_public_key_forms():
    pub = _KEY.public_key()
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    compressed = pub.public_bytes(serialization.Encoding.X962,
                                  serialization.PublicFormat.CompressedPoint)
    forms = [
        _KEY_PUB65, _KEY_PUB65.hex(), _KEY_PUB65.hex().upper(), "0x" + _KEY_PUB65.hex(),
        _KEY_PUB65[1:], _KEY_PUB65[1:].hex(),
        der, der.hex(), der.hex().upper(), " ".join(der.hex()[i:i + 4] for i in range(0, 182, 4)),
        ":".join(der.hex()[i:i + 2] for i in range(0, 182, 2)),
        base64.b64encode(der).decode(), base64.b64encode(_KEY_PUB65).decode(),
        pem, pem.encode(), der.hex().encode(), compressed, compressed.hex(), bytearray(der),
    ]
    for form in forms:
        assert ocmf.load_public_key(form) == _KEY_PUB65, form
    assert len(ocmf.key_fingerprint(pem)) == 16
    assert ocmf.key_fingerprint(pem) == ocmf.key_fingerprint(_KEY_PUB65)


@pytest.mark.parametrize("bad", [
    "", "   ", "zz", "04" + "00" * 64, b"\x04" + b"\x01" * 64, b"\x05" + b"\x00" * 64,
    "not a key at all!", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    b"\xff\xfe", 12345, None, "30" * 91, b"\x30\x03\x02\x01\x01",
])
def test_bad_public_keys(bad):
    with pytest.raises(ocmf.BadKeyError):
        ocmf.load_public_key(bad)


def test_rsa_key_is_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ocmf.BadKeyError, match="not an EC key"):
        ocmf.load_public_key(pem)


# ------------------------------------------------------------- OCPP 1.6 SignedData

def _oca(record, key_field=None, **extra):
    body = {"signedMeterData": base64.b64encode(record.encode()).decode(),
            "signingMethod": "", "encodingMethod": "OCMF", **extra}
    if key_field is not None:
        body["publicKey"] = key_field
    return json.dumps(body)


def test_decode_ocpp_signed_data_three_ways():
    case = REAL["valid"][0]
    record = case["record"]
    key65 = ocmf.load_public_key(case["public_key"])
    der_hex = case["public_key"]
    for value in (record, record.encode().hex(), record.encode().hex().upper(),
                  "  " + record + "\n", _oca(record), _oca(record).encode(),
                  base64.b64encode(record.encode()).decode()):
        assert ocmf.decode_ocpp_signed_data(value) == record
        assert ocmf.verify(ocmf.decode_ocpp_signed_data(value), key65).sequence == 32
    for key_field in (base64.b64encode(("oca:base16:asn1:" + der_hex).encode()).decode(),
                      base64.b64encode(("oca:base16:secp256r1:" + " ".join(
                          der_hex[i:i + 2] for i in range(0, len(der_hex), 2))).encode()).decode(),
                      base64.b64encode(der_hex.encode()).decode(),
                      base64.b64encode(bytes.fromhex(der_hex)).decode()):
        got_record, got_key = ocmf.decode_ocpp_signed_data_full(_oca(record, key_field))
        assert got_record == record and got_key == key65
    assert ocmf.decode_ocpp_signed_data_full(_oca(record)) == (record, None)
    assert ocmf.decode_ocpp_signed_data_full(record) == (record, None)
    # the plain decoder does not care about a broken key beside the record
    assert ocmf.decode_ocpp_signed_data(_oca(record, "bm90IGEga2V5")) == record
    with pytest.raises(ocmf.BadKeyError):
        ocmf.decode_ocpp_signed_data_full(_oca(record, "bm90IGEga2V5"))


@pytest.mark.parametrize("value,error", [
    ("", ocmf.StructureError),
    ("hello", ocmf.StructureError),
    ("4f434d46", ocmf.StructureError),  # hex of "OCMF" without the bar
    ("{", ocmf.JsonError),
    ('{"signedMeterData": 5}', ocmf.StructureError),
    ('{"foo": "bar"}', ocmf.StructureError),
    ('[1, 2]', ocmf.StructureError),
    ('{"signedMeterData": "T0NNRnw=", "encodingMethod": "EDL"}', ocmf.StructureError),
    ('{"signedMeterData": "!!!", "encodingMethod": "OCMF"}', ocmf.StructureError),
    (b"\xff\xfe", ocmf.StructureError),
    (None, ocmf.StructureError),
    ("4f" * 300000, ocmf.StructureError),
    ('{"signedMeterData": "' + base64.b64encode(b'{"signedMeterData": "e30="}').decode() + '"}',
     ocmf.StructureError),
])
def test_decode_ocpp_signed_data_errors(value, error):
    with pytest.raises(error):
        ocmf.decode_ocpp_signed_data_full(value)


# --------------------------------------------------------------- errors, by kind

_GOOD = payload_with([{"TM": "2024-01-01T00:00:00,000+0000 S", "RV": 1, "RI": "1-0:1.8.0",
                       "RU": "Wh", "ST": "G"}])


@pytest.mark.parametrize("record,error,message", [
    ("", ocmf.StructureError, "OCMF"),
    ("OCMF", ocmf.StructureError, "OCMF"),
    ("ocmf|{}|{}", ocmf.StructureError, "OCMF"),
    ("OCMF|", ocmf.JsonError, "payload"),
    ("OCMF|{", ocmf.JsonError, "payload"),
    ("OCMF|[1]|{}", ocmf.StructureError, "not a JSON object"),
    ("OCMF|" + _GOOD, ocmf.StructureError, "expected '|'"),
    ("OCMF|" + _GOOD + "|", ocmf.JsonError, "signature"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"00\"}|{}", ocmf.JsonError, "signature"),
    ("OCMF|" + _GOOD + "|[]", ocmf.StructureError, "signature section"),
    ("OCMF|" + _GOOD + "|{}", ocmf.StructureError, "SD"),
    ("OCMF|" + _GOOD + "|{\"SD\":5}", ocmf.StructureError, "SD"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"zz\"}", ocmf.StructureError, "not valid hex"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"MAYCAQECAQ!!\",\"SE\":\"base64\"}", ocmf.StructureError,
     "base64"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"300602010102\"}", ocmf.StructureError, "DER"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"3006020101020101\",\"SE\":\"base32\"}", ocmf.AlgorithmError,
     "encoding"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"3006020101020101\",\"SM\":\"text/plain\"}", ocmf.AlgorithmError,
     "mime"),
    ("OCMF|" + _GOOD + "|{\"SD\":\"3006020101020101\",\"SA\":7}", ocmf.StructureError, "SA"),
    ('OCMF|{"PG":"T1","PG":"T2","RD":[]}|{"SD":"3006020101020101"}', ocmf.JsonError, "duplicate"),
    ('OCMF|{"RD":[{"RV":NaN}]}|{"SD":"3006020101020101"}', ocmf.JsonError, "NaN"),
    ('OCMF|{"RD":[{"RV":Infinity}]}|{"SD":"3006020101020101"}', ocmf.JsonError, "Infinity"),
    ('OCMF|{"PG":"T1"}|{"SD":"3006020101020101"}', ocmf.StructureError, "RD"),
    ('OCMF|{"RD":[]}|{"SD":"3006020101020101"}', ocmf.StructureError, "RD"),
    ('OCMF|{"RD":{}}|{"SD":"3006020101020101"}', ocmf.StructureError, "RD"),
    ('OCMF|{"RD":[5]}|{"SD":"3006020101020101"}', ocmf.StructureError, "reading 0"),
    ('OCMF|{"RD":[{"TM":5}]}|{"SD":"3006020101020101"}', ocmf.StructureError, "TM"),
    ('OCMF|{"PG":5,"RD":[{}]}|{"SD":"3006020101020101"}', ocmf.StructureError, "PG"),
    ('OCMF|{"RD":[{"TM":"yesterday"}]}|{"SD":"3006020101020101"}', ocmf.StructureError, "TM"),
    ('OCMF|{"RD":[{"TM":"2024-13-01T00:00:00,000+0000 S"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "valid date"),
    ('OCMF|{"RD":[{"TM":"2024-01-01T00:00:00,000+2400 S"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "zone"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":-5,"RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "negative"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":"NaN","RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "not a number"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":"1_000","RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "not a number"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":"\uff11\uff12","RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "not a number"),
    ('OCMF|{"RD":[{"TM":"\uff12024-01-01T00:00:00,000+0000 S"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "TM"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":true,"RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "not a number"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "not a number"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":1E400,"RU":"Wh"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "out of range"),
    (('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":9223372036854775808,"RU":"Wh"}]}|'
     '{"SD":"3006020101020101"}'), ocmf.StructureError, "out of range"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":5,"RU":"sec"}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "energy unit"),
    ('OCMF|{"RD":[{"RI":"1-0:1.8.0","RV":5}]}|{"SD":"3006020101020101"}',
     ocmf.StructureError, "energy unit"),
    ("OCMF|{\"RD\":[{}]}|{\"SD\":\"3006020101020101\"}\ud800", ocmf.JsonError, "signature"),
    ("OCMF|{\"RD\":[{\"X\":\"\ud800\"}]}|{\"SD\":\"3006020101020101\"}", ocmf.StructureError,
     "UTF-8"),
    (b"OCMF|\xff", ocmf.StructureError, "UTF-8"),
    (12, ocmf.StructureError, "str or bytes"),
    ("OCMF|" + "[" * 100000 + "]" * 100000 + "|{}", ocmf.StructureError, "characters"),
    ("OCMF|" + "{\"a\":" * 5000 + "1" + "}" * 5000 + "|{}", ocmf.StructureError, "brackets"),
    ("OCMF|" + "[" * 700 + "]" * 700 + "|{}", ocmf.StructureError, "not a JSON object"),
])
def test_parse_errors_say_what_is_wrong(record, error, message):
    with pytest.raises(error, match=message):
        ocmf.parse(record)


def test_pagination_counter_is_bounded_before_conversion():
    """A PG of thousands of digits was a plain ValueError from int() (CPython's 4300-digit
    limit), not the module's error; the store keeps sequences as 64-bit integers."""
    def rec(pg):
        return signed(_GOOD.replace('"PG":"T5"', f'"PG":"{pg}"', 1))
    assert '"PG":"T5"' in _GOOD
    assert ocmf.verify(rec("F9223372036854775807"), _KEY_PUB65).sequence == 2 ** 63 - 1
    assert ocmf.parse(rec("F" + "0" * 5000 + "12")).sequence == 12
    for pg in ("F9223372036854775808", "T" + "9" * 5000, "F" + "1" * 20):
        with pytest.raises(ocmf.StructureError, match="pagination PG .* out of range"):
            ocmf.parse(rec(pg))


def test_verify_errors_by_kind():
    good = signed(_GOOD)
    with pytest.raises(ocmf.AlgorithmError, match="secp384r1"):
        ocmf.verify(signed(_GOOD, sa="ECDSA-secp384r1-SHA256"), _KEY_PUB65)
    with pytest.raises(ocmf.AlgorithmError):
        ocmf.verify(signed(_GOOD, sa="RSA-PSS"), _KEY_PUB65)
    with pytest.raises(ocmf.BadKeyError):
        ocmf.verify(good, "nonsense")
    with pytest.raises(ocmf.SignatureMismatch):
        ocmf.verify(good, PUB)
    with pytest.raises(ocmf.SignatureMismatch):
        ocmf.verify(good.replace('"RV":1', '"RV":2'), _KEY_PUB65)
    # a valid signature for other bytes does not transfer
    other = signed(_GOOD.replace('"T5"', '"T6"'))
    spliced = "OCMF|" + _GOOD + "|" + other.rsplit("|", 1)[1]
    with pytest.raises(ocmf.SignatureMismatch):
        ocmf.verify(spliced, _KEY_PUB65)
    for exc in (ocmf.StructureError, ocmf.JsonError, ocmf.AlgorithmError, ocmf.BadKeyError,
                ocmf.SignatureMismatch):
        assert issubclass(exc, ocmf.OcmfError) and issubclass(exc, ValueError)


# ------------------------------------------------------ hostile input, property based

def _only_ocmf_errors(fn, *a):
    try:
        fn(*a)
    except ocmf.OcmfError:
        pass


_VALID_RECORDS = [c["record"] for c in REAL["valid"]] + [c["record"] for c in BUILD["build"]]


@FUZZ
@given(st.one_of(st.text(max_size=400), st.binary(max_size=400),
                 st.text(max_size=300).map(lambda s: "OCMF|" + s),
                 st.text(max_size=300).map(lambda s: "OCMF|{" + s + "}|{" + s + "}")))
def test_fuzz_random_input_only_raises_ocmf_errors(value):
    _only_ocmf_errors(ocmf.parse, value)
    _only_ocmf_errors(ocmf.verify, value, PUB)
    _only_ocmf_errors(ocmf.decode_ocpp_signed_data_full, value)
    _only_ocmf_errors(ocmf.load_public_key, value)


@FUZZ
@given(st.sampled_from(_VALID_RECORDS), st.data())
def test_fuzz_mutated_records_only_raise_ocmf_errors(record, data):
    ops = data.draw(st.lists(st.tuples(
        st.sampled_from(["replace", "insert", "delete", "truncate"]),
        st.integers(0, len(record)),
        st.sampled_from(list('|{}[]",:0123456789.eE-+ \\OCMFabc\u00e9\x00') + ["\ud800"])),
        min_size=1, max_size=4))
    mutated = record
    for op, pos, ch in ops:
        pos = min(pos, len(mutated))
        if op == "replace":
            mutated = mutated[:pos] + ch + mutated[pos + 1:]
        elif op == "insert":
            mutated = mutated[:pos] + ch + mutated[pos:]
        elif op == "delete":
            mutated = mutated[:pos] + mutated[pos + 1:]
        else:
            mutated = mutated[:pos]
    assume(mutated != record)
    for key in (PUB, REAL["valid"][0]["public_key"]):
        _only_ocmf_errors(ocmf.verify, mutated, key)
    _only_ocmf_errors(ocmf.parse, mutated)
    _only_ocmf_errors(ocmf.decode_ocpp_signed_data, mutated.encode("utf-8", "replace").hex())


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.sampled_from(["RD", "RV", "RI", "RU", "TM", "PG", "GS",
                                                       "MS", "SD", "SA", "SE", "SM", "x"]),
                                      kids, max_size=5), max_leaves=20),
       st.recursive(st.none() | st.integers() | st.text(max_size=8),
                    lambda kids: st.dictionaries(st.sampled_from(["SD", "SA", "SE", "SM"]),
                                                 kids, max_size=4), max_leaves=6))
def test_fuzz_structured_json_only_raises_ocmf_errors(payload, signature):
    record = "OCMF|" + json.dumps(payload) + "|" + json.dumps(signature)
    _only_ocmf_errors(ocmf.verify, record, PUB)
    # and with typical field values planted
    if isinstance(payload, dict):
        payload.setdefault("RD", [{"RI": "1-0:1.8.0", "RU": "kWh", "RV": payload.get("RV", 1)}])
        record = "OCMF|" + json.dumps(payload) + '|{"SD":"3006020101020101"}'
        _only_ocmf_errors(ocmf.verify, record, PUB)


@FUZZ
@given(st.one_of(st.binary(max_size=120), st.text(max_size=200),
                 st.binary(min_size=64, max_size=66).map(lambda b: b.hex())))
def test_fuzz_keys_only_raise_bad_key_error(value):
    try:
        out = ocmf.load_public_key(value)
    except ocmf.BadKeyError:
        return
    assert len(out) == 65 and out[0] == 4
