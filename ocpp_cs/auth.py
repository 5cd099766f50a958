"""Charger passwords (OCPP security profiles 1 and 2: HTTP Basic auth).

Passwords are stored as scrypt hashes with their cost parameters in the string
(`scrypt$n$r$p$salt$hash`), so the work factor can be raised later without
invalidating old hashes. scrypt is slow on purpose (≈50 ms, 16 MiB), which makes
a stolen database expensive to brute-force; it runs in a worker thread so the
event loop never stalls on it.

A charger reconnects often (network blips, reboots). `VerifiedCache` remembers,
per charger, an HMAC of the last password that verified against the current
hash, keyed by a random per-process secret: a correct reconnect costs one HMAC.
A changed password is a new hash, which the HMAC covers, so the old entry no
longer matches. Wrong passwords are rationed by `Throttle` (token buckets per
remote network and per charger id): a few free, then refused (HTTP 429) before
any scrypt runs, so guessing costs the guesser time, not the gateway CPU.
"""
import base64
import hashlib
import hmac
import ipaddress
import math
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


# password checks a remote network or a charger id may fail at once, and how fast they
# come back (one every AUTH_REFILL_S): about 6 guesses a minute after the first 5
AUTH_BURST = 5
AUTH_REFILL_S = 10.0


def network_of(host):
    """The key a remote host is throttled under: the IPv4 address, or the IPv6 /64."""
    try:
        addr = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return str(host)
    if addr.version == 4:
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.ip_network(f"{addr}/64", strict=False))


class Throttle:
    """Token buckets that ration password checks, with bounded memory.

    `wait(keys, now)` → None when every key's bucket holds a token, else the seconds
    until one is back. `take(keys, now)` spends one from each (a bucket may go into
    debt, down to −burst, so hammering keeps it empty); `refund` gives it back. The
    server takes the charger id's token before scrypt runs (concurrent guesses at one
    id cannot overrun it) and refunds it when the password was right; the remote
    address pays only for failures, so many chargers behind one address may log in
    at once. At most `max_keys` buckets are kept; beyond that the ones that have
    filled up again go first, then the oldest.
    """

    def __init__(self, burst=AUTH_BURST, refill_s=AUTH_REFILL_S, max_keys=10_000):
        self.burst = burst
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets = {}          # key -> [tokens, at]

    def _level(self, key, now):
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        return min(float(self.burst), entry[0] + (now - entry[1]) / self.refill_s)

    def wait(self, keys, now):
        short = [self._level(k, now) for k in keys if self._level(k, now) < 1.0]
        if short:
            return max(1, math.ceil((1.0 - min(short)) * self.refill_s))
        return None

    def take(self, keys, now):
        for key in keys:
            level = self._level(key, now)
            self._buckets.pop(key, None)        # re-inserted last: dict order is age
            self._buckets[key] = [max(-float(self.burst), level - 1.0), now]
        if len(self._buckets) > self.max_keys:
            self._prune(now)

    def refund(self, keys, now):
        for key in keys:
            entry = self._buckets.get(key)
            if entry is not None:
                entry[0] = min(float(self.burst), self._level(key, now) + 1.0)
                entry[1] = now

    def _prune(self, now):
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self):
        return len(self._buckets)
