"""ECDSA over secp256r1 (NIST P-256) with SHA-256, in plain Python.

Why our own code: the meter firmware runs MicroPython on an ESP32, which has
`hashlib.sha256` but no ECDSA, no `hmac` and no way to install `cryptography`.
The gateway (CPython) imports the very same file, so both sides share one
definition; it still *verifies* with `cryptography` in production, and the tests
check this module against it.

Nonces are deterministic (RFC 6979): a device's random source is the weakest part
of an ECDSA signer, and a repeated nonce leaks the key. Not constant time: a timing
side channel on a pure-Python interpreter cannot be closed here; the device key
only ever signs the device's own readings. Compiling this file from source takes
about 50 KB of heap for a moment: on an ESP32 freeze it or ship it as .mpy. The
speed and heap choices are noted beside the code they shape.
"""
import hashlib

try:
    from os import urandom as _urandom
except ImportError:  # MicroPython ports older than the os/uos rename
    from uos import urandom as _urandom

# Curve parameters (SEC 2 / FIPS 186-4), y^2 = x^3 - 3x + b over GF(p).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# Modular inverses: CPython's pow(x, -1, m) where it exists; MicroPython returns a wrong
# answer (0) for a negative exponent and its Fermat pow is 25x slower than the extended
# Euclid below, so it gets the Euclid.
try:
    _POW_INVERSE = pow(3, -1, 7) == 5
except (ValueError, TypeError):
    _POW_INVERSE = False


def _inverse(a, m):
    """a^-1 mod m for 0 < a < m, m prime."""
    if _POW_INVERSE:
        return pow(a, -1, m)
    x0, x1, r0, r1 = 1, 0, a, m
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        x0, x1 = x1, x0 - q * x1
    return x0 % m


# ---------------------------------------------------------------- group law
# Points are Jacobian (X, Y, Z), meaning the affine (X/Z^2, Y/Z^3); Z == 0 is
# the point at infinity.  All coordinates are kept reduced into [0, P).  With the
# a = -3 doubling, a scalar multiplication needs one modular inversion at the end
# instead of one per step.

def _double(X, Y, Z):
    # dbl-2001-b: a = -3.
    p = P
    if Z == 0 or Y == 0:
        return 0, 1, 0
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y * Z % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add(X1, Y1, Z1, X2, Y2, Z2):
    # General Jacobian addition (add-1998-cmo-2); handles every special case.
    p = P
    if Z1 == 0:
        return X2, Y2, Z2
    if Z2 == 0:
        return X1, Y1, Z1
    Z1Z1 = Z1 * Z1 % p
    Z2Z2 = Z2 * Z2 % p
    U1 = X1 * Z2Z2 % p
    U2 = X2 * Z1Z1 % p
    S1 = Y1 * Z2 * Z2Z2 % p
    S2 = Y2 * Z1 * Z1Z1 % p
    H = U2 - U1
    R = S2 - S1
    if H == 0:
        if R == 0:
            return _double(X1, Y1, Z1)
        return 0, 1, 0
    HH = H * H % p
    HHH = H * HH % p
    V = U1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - S1 * HHH) % p
    Z3 = Z1 * Z2 * H % p
    return X3, Y3, Z3


def _to_affine(X, Y, Z):
    zi = _inverse(Z, P)
    zi2 = zi * zi % P
    return X * zi2 % P, Y * zi2 * zi % P


def _mul(k, X, Y, Z):
    """k * (X, Y, Z) for any point: 4-bit fixed window, used by verify only."""
    table = [(0, 1, 0), (X, Y, Z)]
    for _ in range(14):
        t = table[-1]
        table.append(_add(t[0], t[1], t[2], X, Y, Z))
    RX, RY, RZ = 0, 1, 0
    for shift in range(252, -4, -4):
        RX, RY, RZ = _double(RX, RY, RZ)
        RX, RY, RZ = _double(RX, RY, RZ)
        RX, RY, RZ = _double(RX, RY, RZ)
        RX, RY, RZ = _double(RX, RY, RZ)
        w = (k >> shift) & 15
        if w:
            t = table[w]
            RX, RY, RZ = _add(RX, RY, RZ, t[0], t[1], t[2])
    return RX, RY, RZ


# ------------------------------------------------------ comb for k * G
# Signing multiplies the fixed generator G.  A 4-tooth comb (Lim-Lee) over a table
# of 15 affine points, sums of G, 2^64 G, 2^128 G, 2^192 G, needs only 64 doublings
# and at most 64 mixed additions, a quarter of the doublings of a plain 4-bit window
# with the same 15 points.  The table (about 2.5 KB of heap) is built on first use.
_TX = None  # affine x of the 16 comb points (index 0 unused)
_TY = None


def _comb_table():
    """Entry i = sum of 2^(64 j) G over the bits j set in i, in affine form."""
    global _TX, _TY
    if _TX is None or _TY is None:
        base = [(GX, GY, 1)]
        for _ in range(3):
            X, Y, Z = base[-1]
            for _ in range(64):
                X, Y, Z = _double(X, Y, Z)
            base.append((X, Y, Z))
        tx = [0] * 16
        ty = [0] * 16
        for i in range(1, 16):
            X, Y, Z = 0, 1, 0
            for j in range(4):
                if i >> j & 1:
                    b = base[j]
                    X, Y, Z = _add(X, Y, Z, b[0], b[1], b[2])
            x, y = _to_affine(X, Y, Z)
            # re-created from bytes: a `%` result keeps the dividend's digit
            # buffer under MicroPython (160 bytes instead of 64).
            tx[i] = int.from_bytes(x.to_bytes(32, "big"), "big")
            ty[i] = int.from_bytes(y.to_bytes(32, "big"), "big")
        _TX, _TY = tx, ty
    return _TX, _TY


# Big-integer `%` is the dearest operation under MicroPython, so sums of products are
# reduced once, and the point formulas are written out inline in this hot loop (a Python
# call costs as much as a few multiplications there).  No @micropython.native: tried on
# the unix port, signing got slower (the big integer work is already in C), and it would
# tie the file to one architecture.
def _mul_g(k):
    """k * G in Jacobian coordinates, 0 < k < N.

    Column t of the comb takes bit t of each 64-bit quarter of k; the point
    formulas are inlined: dbl-2001-b (a = -3) and madd-2007-bl (Z2 = 1).
    """
    tx, ty = _comb_table()
    p = P
    kb = k.to_bytes(32, "big")
    X, Y, Z = 0, 1, 0
    for t in range(63, -1, -1):
        o = 31 - (t >> 3)
        s = t & 7
        i = ((kb[o] >> s) & 1) | (((kb[o - 8] >> s) & 1) << 1) | \
            (((kb[o - 16] >> s) & 1) << 2) | (((kb[o - 24] >> s) & 1) << 3)
        if Z:
            # double
            delta = Z * Z % p
            gamma = Y * Y % p
            beta = X * gamma % p
            alpha = 3 * (X - delta) * (X + delta) % p
            X = (alpha * alpha - 8 * beta) % p
            Z = 2 * Y * Z % p
            Y = (alpha * (4 * beta - X) - 8 * gamma * gamma) % p
        if i:
            x2 = tx[i]
            y2 = ty[i]
            if not Z:
                X, Y, Z = x2, y2, 1
                continue
            # mixed add
            ZZ = Z * Z % p
            H = x2 * ZZ % p - X
            R = y2 * Z * ZZ % p - Y
            if H == 0:
                if R == 0:
                    X, Y, Z = _double(X, Y, Z)
                else:
                    X, Y, Z = 0, 1, 0
                continue
            HH = H * H % p
            HHH = H * HH % p
            V = X * HH % p
            X = (R * R - HHH - 2 * V) % p
            Y = (R * (V - X) - Y * HHH) % p
            Z = Z * H % p
    return X, Y, Z


# ------------------------------------------------------------------- HMAC
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def _hmac(key, data):
    """HMAC-SHA256 for a key of at most 64 bytes (here always 32)."""
    k = int.from_bytes(key + bytes(64 - len(key)), "big")
    inner = hashlib.sha256((k ^ _IPAD).to_bytes(64, "big"))
    inner.update(data)
    outer = hashlib.sha256((k ^ _OPAD).to_bytes(64, "big"))
    outer.update(inner.digest())
    return outer.digest()


# ------------------------------------------------------------- public API

def _secret_int(secret):
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("secret must be bytes")
    if len(secret) != 32:
        raise ValueError("secret must be 32 bytes")
    d = int.from_bytes(secret, "big")
    if not 0 < d < N:
        raise ValueError("secret out of range")
    return d


def _message_bytes(message):
    if not isinstance(message, (bytes, bytearray)):
        raise TypeError("message must be bytes")
    return bytes(message)


def generate_secret():
    """A new private key: 32 bytes, uniform in [1, N-1] (rejection sampling)."""
    while True:
        b = _urandom(32)
        if 0 < int.from_bytes(b, "big") < N:
            return bytes(b)


def public_key(secret):
    """65-byte uncompressed SEC1 public key 0x04 || X || Y."""
    d = _secret_int(secret)
    x, y = _to_affine(*_mul_g(d))
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _der_int(v):
    b = v.to_bytes(33, "big")
    i = 0
    while i < 32 and b[i] == 0 and b[i + 1] < 0x80:
        i += 1
    return b"\x02" + bytes([33 - i]) + b[i:]


def _nonces(d, e):
    """Candidate nonces k per RFC 6979 section 3.2 (qlen = hlen = 256 bits)."""
    x = d.to_bytes(32, "big")
    h1 = (e % N).to_bytes(32, "big")  # bits2octets
    V = b"\x01" * 32
    K = _hmac(b"\x00" * 32, V + b"\x00" + x + h1)
    V = _hmac(K, V)
    K = _hmac(K, V + b"\x01" + x + h1)
    V = _hmac(K, V)
    while True:
        V = _hmac(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            yield k
        K = _hmac(K, V + b"\x00")
        V = _hmac(K, V)


# A signature needs about 5 KB of free heap at its peak (bench/sign.py).  No low-s
# normalisation: the OCMF verifiers accept either s.
def sign(secret, message):
    """DER ECDSA signature of SHA-256(message), deterministic nonce per RFC 6979."""
    d = _secret_int(secret)
    e = int.from_bytes(hashlib.sha256(_message_bytes(message)).digest(), "big")
    for k in _nonces(d, e):
        X, _, Z = _mul_g(k)
        zi = _inverse(Z, P)
        r = X * zi * zi % P % N
        if r:
            s = _inverse(k, N) * (e + r * d) % N
            if s:
                body = _der_int(r) + _der_int(s)
                return b"\x30" + bytes([len(body)]) + body
    raise AssertionError("unreachable: _nonces() never ends")


def _der_parse_int(sig, i):
    """(value, next index) of a strict DER INTEGER at sig[i], or None."""
    if i + 2 > len(sig) or sig[i] != 0x02:
        return None
    n = sig[i + 1]
    i += 2
    if n == 0 or n > 33 or i + n > len(sig):
        return None
    if sig[i] & 0x80:
        return None  # negative
    if n > 1 and sig[i] == 0 and not sig[i + 1] & 0x80:
        return None  # not minimal
    return int.from_bytes(sig[i:i + n], "big"), i + n


def decode_signature(sig):
    """(r, s) from a strict DER ECDSA signature, or None if malformed or out of range."""
    if len(sig) < 8 or len(sig) > 72 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        return None
    a = _der_parse_int(sig, 2)
    if a is None:
        return None
    b = _der_parse_int(sig, a[1])
    if b is None or b[1] != len(sig):
        return None
    r, s = a[0], b[0]
    if not (0 < r < N and 0 < s < N):
        return None
    return r, s


def decode_public_key(pub):
    """(x, y) of a valid uncompressed SEC1 key on the curve, or None."""
    if len(pub) != 65 or pub[0] != 4:
        return None
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:], "big")
    if x >= P or y >= P:
        return None
    if (y * y - (x * x * x - 3 * x + B)) % P:
        return None
    return x, y


def verify(public_key, message, signature):
    """True if `signature` (DER) is valid for `message` under `public_key` (SEC1, 65 bytes).

    Any malformed key or signature gives False; only arguments of the wrong
    type (not bytes) raise TypeError.
    """
    for arg in (public_key, message, signature):
        if not isinstance(arg, (bytes, bytearray)):
            raise TypeError("public_key, message and signature must be bytes")
    q = decode_public_key(bytes(public_key))
    rs = decode_signature(bytes(signature))
    if q is None or rs is None:
        return False
    r, s = rs
    e = int.from_bytes(hashlib.sha256(bytes(message)).digest(), "big")
    w = _inverse(s, N)
    u1 = e * w % N
    u2 = r * w % N
    X1, Y1, Z1 = _mul_g(u1) if u1 else (0, 1, 0)
    X2, Y2, Z2 = _mul(u2, q[0], q[1], 1)
    X, _, Z = _add(X1, Y1, Z1, X2, Y2, Z2)
    if Z == 0:
        return False
    zi = _inverse(Z, P)
    return X * zi * zi % P % N == r
