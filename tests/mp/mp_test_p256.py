"""protocol.p256 under MicroPython: the shared vectors, byte for byte, and round trips.

Run: micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_p256.py
(from the repository root, MICROPYPATH containing it; tests/protocol/test_micropython.py does this).
"""
import json

from protocol import p256

VECTORS = "tests/vectors/p256_rfc6979.json"
_V = None


def vectors():
    global _V
    if _V is None:
        with open(VECTORS) as f:
            _V = json.load(f)
    return _V


def h(s):
    return bytes.fromhex(s)


def test_rfc6979_public_key():
    v = vectors()
    assert p256.public_key(h(v["private_key"])) == h(v["public_key"])


def test_rfc6979_signatures_byte_for_byte():
    v = vectors()
    secret = h(v["private_key"])
    for case in v["signatures"]:
        msg = case["message"].encode()
        sig = p256.sign(secret, msg)
        assert sig == h(case["der"]), (case["message"], sig.hex())
        assert p256.decode_signature(sig) == (int(case["r"], 16), int(case["s"], 16))


def test_rfc6979_nonces():
    v = vectors()
    d = int(v["private_key"], 16)
    for case in v["signatures"]:
        e = int.from_bytes(p256.hashlib.sha256(case["message"].encode()).digest(), "big")
        assert next(p256._nonces(d, e)) == int(case["k"], 16)


def test_rfc6979_signatures_verify():
    v = vectors()
    pub = h(v["public_key"])
    for case in v["signatures"]:
        assert p256.verify(pub, case["message"].encode(), h(case["der"]))
        assert not p256.verify(pub, case["message"].encode() + b".", h(case["der"]))


def test_public_key_vectors():
    for case in vectors()["public_keys"]:
        assert p256.public_key(h(case["secret"])) == h(case["public_key"]), case["secret"]


def test_verify_vectors():
    for case in vectors()["verify"]:
        got = p256.verify(h(case["public_key"]), h(case["message"]), h(case["signature"]))
        assert got is case["valid"], case["description"]


def test_sign_verify_roundtrip_random_keys():
    for i in range(5):
        secret = p256.generate_secret()
        assert len(secret) == 32
        d = int.from_bytes(secret, "big")
        assert 0 < d < p256.N
        pub = p256.public_key(secret)
        msg = b"reading %d" % i
        sig = p256.sign(secret, msg)
        assert p256.sign(secret, msg) == sig  # deterministic
        assert p256.verify(pub, msg, sig)
        assert not p256.verify(pub, b"reading %d" % (i + 1), sig)
        bad = bytearray(sig)
        bad[-1] ^= 1
        assert not p256.verify(pub, msg, bytes(bad))


def test_secrets_are_distinct():
    seen = set()
    for _ in range(20):
        seen.add(p256.generate_secret())
    assert len(seen) == 20


def test_bad_secret_rejected():
    for bad in (bytes(32), p256.N.to_bytes(32, "big"), b"\x01" * 31, b"\xff" * 32):
        try:
            p256.sign(bad, b"x")
        except ValueError:
            pass
        else:
            raise AssertionError("accepted bad secret " + bad.hex())


def test_wrong_types_raise_type_error():
    pub = h(vectors()["public_key"])
    for args in (("04", b"m", b"s"), (pub, "m", b"s"), (pub, b"m", None)):
        try:
            p256.verify(*args)
        except TypeError:
            pass
        else:
            raise AssertionError("no TypeError for " + repr(args))


def test_garbage_signatures_are_false():
    pub = h(vectors()["public_key"])
    for sig in (b"", b"\x30", b"\x30\x00", b"\x30\x06\x02\x01\x01\x02\x01\x01",
                b"\x30\x06\x02\x01\x01\x02\x01\x01\x00", b"\x00" * 72, b"\xff" * 72,
                b"\x30\x08\x02\x02\x00\x01\x02\x02\x00\x01"):
        assert p256.verify(pub, b"m", sig) is False, sig
