"""protocol.p256 on CPython, checked against `cryptography` and the shared vectors.

The same vectors run under MicroPython in tests/mp/mp_test_p256.py; the cross-check at
the end has MicroPython sign and `cryptography` verify.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import p256
from sim.services import micropython

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/vectors/p256_rfc6979.json").read_text())
ECDSA = ec.ECDSA(hashes.SHA256())


def crypto_verify(pub: bytes, message: bytes, sig: bytes) -> bool:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
        key.verify(sig, message, ECDSA)
        return True
    except (InvalidSignature, ValueError):
        return False


def crypto_public(d: int) -> bytes:
    return ec.derive_private_key(d, ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


secrets_st = st.integers(min_value=1, max_value=p256.N - 1).map(lambda d: d.to_bytes(32, "big"))


# ------------------------------------------------------------------ RFC 6979

def test_rfc6979_key():
    secret = bytes.fromhex(VECTORS["private_key"])
    assert p256.public_key(secret) == bytes.fromhex(VECTORS["public_key"])
    assert p256.public_key(secret) == crypto_public(int(VECTORS["private_key"], 16))


@pytest.mark.parametrize("case", VECTORS["signatures"], ids=lambda c: c["message"])
def test_rfc6979_signature_byte_for_byte(case):
    secret = bytes.fromhex(VECTORS["private_key"])
    sig = p256.sign(secret, case["message"].encode())
    r, s = int(case["r"], 16), int(case["s"], 16)
    assert sig == encode_dss_signature(r, s) == bytes.fromhex(case["der"])
    d = int(VECTORS["private_key"], 16)
    e = int.from_bytes(p256.hashlib.sha256(case["message"].encode()).digest(), "big")
    assert next(p256._nonces(d, e)) == int(case["k"], 16)
    # the RFC's values really are a signature under the RFC's key
    assert crypto_verify(bytes.fromhex(VECTORS["public_key"]), case["message"].encode(), sig)


@pytest.mark.parametrize("case", VECTORS["public_keys"], ids=lambda c: c["secret"][-8:])
def test_public_key_vectors(case):
    secret = bytes.fromhex(case["secret"])
    assert p256.public_key(secret) == bytes.fromhex(case["public_key"])
    assert crypto_public(int(case["secret"], 16)) == bytes.fromhex(case["public_key"])


@pytest.mark.parametrize("case", VECTORS["verify"], ids=lambda c: c["description"])
def test_verify_vectors(case):
    pub, msg, sig = (bytes.fromhex(case[k]) for k in ("public_key", "message", "signature"))
    assert p256.verify(pub, msg, sig) is case["valid"]
    if not case.get("api_only"):
        assert crypto_verify(pub, msg, sig) is case["valid"]


# ---------------------------------------------------- against cryptography

@settings(max_examples=60, deadline=None)
@given(secret=secrets_st, message=st.binary(max_size=300))
def test_cryptography_verifies_our_signatures(secret, message):
    pub = p256.public_key(secret)
    assert pub == crypto_public(int.from_bytes(secret, "big"))
    sig = p256.sign(secret, message)
    assert p256.sign(secret, message) == sig
    assert crypto_verify(pub, message, sig)
    assert p256.verify(pub, message, sig)


@settings(max_examples=60, deadline=None)
@given(message=st.binary(max_size=300))
def test_we_verify_cryptography_signatures(message):
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    sig = key.sign(message, ECDSA)
    assert p256.verify(pub, message, sig)
    r, s = decode_dss_signature(sig)
    assert p256.verify(pub, message, encode_dss_signature(r, p256.N - s))  # no low-s rule
    assert not p256.verify(pub, message + b"\x00", sig)


def test_every_single_bit_flip_fails():
    secret = p256.generate_secret()
    pub = p256.public_key(secret)
    message = b"OCMF|{...}|"
    sig = p256.sign(secret, message)
    assert p256.verify(pub, message, sig)
    for bit in range(len(sig) * 8):
        assert not p256.verify(pub, message, flip(sig, bit)), bit
    for bit in range(len(message) * 8):
        assert not p256.verify(pub, flip(message, bit), sig), bit
    for bit in range(8, len(pub) * 8, 7):  # the 0x04 prefix is covered by the vectors
        assert not p256.verify(flip(pub, bit), message, sig), bit


# ------------------------------------------------------- hostile input

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pub=st.binary(max_size=80), message=st.binary(max_size=40), sig=st.binary(max_size=90))
def test_verify_garbage_is_false_never_an_exception(pub, message, sig):
    assert p256.verify(pub, message, sig) is False


GOOD_SECRET = bytes.fromhex(VECTORS["private_key"])
GOOD_PUB = bytes.fromhex(VECTORS["public_key"])
GOOD_SIG = p256.sign(GOOD_SECRET, b"sample")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_verify_mutated_der_never_raises(data):
    """Mutations of a real signature: byte edits, truncation, insertion."""
    sig = bytearray(GOOD_SIG)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(sig)))
        if op == "set" and pos < len(sig):
            sig[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del sig[pos:pos + data.draw(st.integers(1, 3))]
        else:
            sig[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
    sig = bytes(sig)
    result = p256.verify(GOOD_PUB, b"sample", sig)
    assert result is crypto_verify(GOOD_PUB, b"sample", sig)
    if sig != GOOD_SIG:
        assert p256.decode_signature(sig) != p256.decode_signature(GOOD_SIG) or result is False


@settings(max_examples=100, deadline=None)
@given(x=st.integers(0, 2**256 - 1), y=st.integers(0, 2**256 - 1))
def test_off_curve_or_out_of_range_keys_are_rejected(x, y):
    pub = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    assert p256.verify(pub, b"sample", GOOD_SIG) is False
    assert p256.decode_public_key(pub) is None


def test_public_key_coordinates_at_or_above_p_rejected():
    x, y = p256.decode_public_key(GOOD_PUB)
    # y + p is congruent but not a valid encoding
    if y + p256.P < 2**256:
        assert not p256.verify(b"\x04" + x.to_bytes(32, "big") + (y + p256.P).to_bytes(32, "big"),
                               b"sample", GOOD_SIG)
    assert p256.decode_public_key(b"\x04" + bytes(64)) is None


@pytest.mark.parametrize("args", [
    ("04" + "00" * 64, b"m", b"s"), (GOOD_PUB, "sample", GOOD_SIG), (GOOD_PUB, b"m", None),
    (GOOD_PUB, b"m", GOOD_SIG.hex()), (None, b"m", GOOD_SIG), (GOOD_PUB, 5, GOOD_SIG),
])
def test_wrong_argument_types_raise_type_error(args):
    with pytest.raises(TypeError):
        p256.verify(*args)


def test_bytearray_arguments_accepted():
    assert p256.verify(bytearray(GOOD_PUB), bytearray(b"sample"), bytearray(GOOD_SIG))
    assert p256.sign(bytearray(GOOD_SECRET), bytearray(b"sample")) == GOOD_SIG


@pytest.mark.parametrize("secret", [bytes(32), p256.N.to_bytes(32, "big"), b"\xff" * 32,
                                    b"\x01" * 31, b"\x01" * 33])
def test_invalid_secrets_raise_value_error(secret):
    with pytest.raises(ValueError):
        p256.sign(secret, b"x")
    with pytest.raises(ValueError):
        p256.public_key(secret)


def test_secret_and_message_types():
    with pytest.raises(TypeError):
        p256.sign(GOOD_SECRET.hex(), b"x")
    with pytest.raises(TypeError):
        p256.sign(GOOD_SECRET, "x")


def test_generate_secret_in_range_and_distinct():
    secrets = {p256.generate_secret() for _ in range(200)}
    assert len(secrets) == 200
    assert all(len(s) == 32 and 0 < int.from_bytes(s, "big") < p256.N for s in secrets)


# ------------------------------------------- the comb against the slow path

def _affine(point):
    X, Y, Z = point
    return None if Z == 0 else p256._to_affine(X, Y, Z)


def _reference(k):
    return _affine(p256._mul(k % p256.N, p256.GX, p256.GY, 1)) if k % p256.N else None


@pytest.mark.parametrize("k", [1, 2, 3, 15, 16, 2**63, 2**64 - 1, 2**64, 2**64 + 1,
                               2**128 + 2**192, 2**192 - 1, p256.N - 2, p256.N - 1])
def test_comb_matches_window_multiplication(k):
    assert _affine(p256._mul_g(k)) == _reference(k)


def _comb_collisions():
    """Scalars (some >= N) whose comb hits the H == 0 branches: acc == +-T[i]."""
    n, out = p256.N, []
    for i in range(1, 16):
        rhs = sum(1 << (64 * j) for j in range(4) if i >> j & 1)
        for target in (rhs + n, n - rhs):  # 2*acc == T[i] (doubling) or == -T[i] (infinity)
            if target % 2 or target <= 0:
                continue
            c = target // 2
            limbs = [(c >> (64 * j)) & (2**64 - 1) for j in range(4)]
            if any(limb >> 63 for limb in limbs) or c >> 256:
                continue
            out.append(sum(((limbs[j] << 1) | (i >> j & 1)) << (64 * j) for j in range(4)))
    return out


def test_comb_handles_point_collisions():
    ks = _comb_collisions()
    assert ks, "no colliding scalar constructed"
    for k in ks:
        assert _affine(p256._mul_g(k)) == _reference(k)


# ------------------------------------------ MicroPython signs, cryptography checks

CROSS_SCRIPT = """
import os
from protocol import p256
for i in range(200):
    secret = p256.generate_secret()
    msg = os.urandom(os.urandom(1)[0])
    print(p256.public_key(secret).hex(), msg.hex(), p256.sign(secret, msg).hex())
print("done")
"""


def test_micropython_signatures_verified_by_cryptography():
    proc = subprocess.run(
        [micropython(), "-X", "heapsize=100K", "-c", CROSS_SCRIPT],
        cwd=ROOT, env=dict(os.environ, MICROPYPATH=f".frozen:{ROOT}"),
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[200] == "done", proc.stdout[-500:]
    seen_keys = set()
    for line in lines[:200]:
        pub, msg, sig = (bytes.fromhex(f) for f in line.split(" "))
        seen_keys.add(pub)
        assert crypto_verify(pub, msg, sig), line
        assert not crypto_verify(pub, msg, flip(sig, 8 * len(sig) - 1)), line
        if msg:
            assert not crypto_verify(pub, flip(msg, 0), sig), line
        else:
            assert not crypto_verify(pub, b"\x00", sig), line
    assert len(seen_keys) == 200
