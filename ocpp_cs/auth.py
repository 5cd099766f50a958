"""Charger passwords (OCPP security profiles 1 and 2: HTTP Basic auth).

Passwords are stored as scrypt hashes with their cost parameters in the string
(`scrypt$n$r$p$salt$hash`), so the work factor can be raised later without
invalidating old hashes. scrypt is slow on purpose (≈50 ms, 16 MiB), which makes
a stolen database expensive to brute-force; it runs in a worker thread so the
event loop never stalls on it.

A charger reconnects often (network blips, reboots). `VerifiedCache` remembers,
per charger, an HMAC of the last password that verified against the current
hash, keyed by a random per-process secret: a correct reconnect costs one HMAC;
a wrong password always pays the full scrypt.
"""
import base64
import hashlib
import hmac
import os
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD = 8     # OCPP 1.6 security whitepaper: AuthorizationKey is 16..40 bytes; we allow 8+
MAX_PASSWORD = 64


class PasswordError(ValueError):
    pass


def check_password_rules(password):
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise PasswordError(f"charger password must be {MIN_PASSWORD}..{MAX_PASSWORD} characters")
    if not password.isprintable():
        raise PasswordError("charger password must be printable")
    return password


def hash_password(password, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P):
    check_password_rules(password)
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=256 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(stored, password):
    """Constant-time check of `password` against a stored `scrypt$…` string."""
    if not stored or not isinstance(password, str):
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(errors="surrogateescape"), salt=bytes.fromhex(salt),
                             n=int(n), r=int(r), p=int(p), maxmem=256 * 1024 * 1024,
                             dklen=len(bytes.fromhex(digest)))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def parse_basic(header):
    """'Basic base64(user:pass)' → (user, pass), or None when malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "surrogateescape")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_header(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class VerifiedCache:
    def __init__(self):
        self._key = secrets.token_bytes(32)
        self._ok = {}

    def _tag(self, charger_id, stored, password):
        msg = f"{charger_id}\0{stored}\0{password}".encode(errors="surrogateescape")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def known_good(self, charger_id, stored, password):
        tag = self._ok.get(charger_id)
        return tag is not None and hmac.compare_digest(tag, self._tag(charger_id, stored, password))

    def remember(self, charger_id, stored, password):
        self._ok[charger_id] = self._tag(charger_id, stored, password)

    def forget(self, charger_id):
        self._ok.pop(charger_id, None)
