"""Signed firmware bundles: check one and unpack it into an application directory.

A bundle (built by tools/release.py) is a plain ustar archive: manifest.json, manifest.sig
(its signature by the release key), then app/<name> for each file, in manifest order.
Why tar and our own reader: the device must check a bundle it streams from flash with a
few KB of heap; ustar is 512-byte headers and padded data, while zip or gzip would need a
directory or an inflate window. Why sign the manifest, not the archive: the device checks
the signature once (about a second on an ESP32), before writing anything, then each
file's SHA-256 while copying it.

Part of the wire contract, not of the firmware: the device (firmware/ota.py) and CPython
(the installer, the update server) run the same code, so both refuse exactly the same
bundles. Every refusal is a BundleError whose message says what is wrong; nothing is
written outside `dest`.
"""
import hashlib
import json
import os

from protocol import p256

# manifest.json, compact JSON with sorted keys (the exact bytes are what is signed):
#   {"files": [[name, size, sha256 hex], ...], "format": 1, "march": "xtensawin",
#    "mpy": "6.3", "port": "esp32", "version": "0.2.0"}
# manifest.sig: DER ECDSA P-256 / SHA-256 signature of manifest.json. Names: no "..", no
# absolute path, only NAME_CHARS, no file that is also another's directory; the nesting
# is checked before json.loads, which recurses.
BLOCK = 512
FORMAT = 1
MAX_FILES = 64
MAX_FILE = 256 * 1024
MAX_MANIFEST = 16 * 1024
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_./-"


class BundleError(Exception):
    pass


def _hex(b):
    return "".join("%02x" % x for x in b)


def _text(field, what):
    """A NUL-terminated header field as text; BundleError (not UnicodeError) when not UTF-8,
    since headers are read before the signature is checked."""
    try:
        return bytes(field).split(b"\x00")[0].decode()
    except UnicodeError:
        raise BundleError("bad %s in tar header" % what)


def _octal(field):
    text = _text(field, "size field").strip()
    if not text:
        return 0
    for ch in text:
        if ch not in "01234567":
            raise BundleError("bad size field in tar header")
    return int(text, 8)


def check_name(name):
    if not isinstance(name, str) or not 0 < len(name) <= 90:
        raise BundleError("bad file name in manifest")
    for ch in name:
        if ch not in NAME_CHARS:
            raise BundleError("bad character in file name %r" % name)
    if name[0] == "/" or name.endswith("/") or "//" in name:
        raise BundleError("bad file name %r" % name)
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise BundleError("bad file name %r" % name)
    return name


class Reader:
    """Sequential ustar entries from a file object opened for binary reading."""

    def __init__(self, f):
        self.f = f
        self.left = 0      # bytes of the current entry not yet read
        self.pad = 0

    def next(self):
        """(name, size) of the next entry, or None at the end of the archive."""
        self.skip()
        header = self.f.read(BLOCK)
        if not header or len(header) < BLOCK:
            raise BundleError("archive truncated (no end marker)")
        if header == bytes(BLOCK):
            return None
        check = _octal(header[148:156])
        total = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if check != total:
            raise BundleError("tar header checksum mismatch")
        if header[156:157] not in (b"0", b"\x00"):
            raise BundleError("tar entry is not a regular file")
        name = _text(header[:100], "name")
        prefix = _text(header[345:500], "name prefix")
        if prefix:
            name = prefix + "/" + name
        size = _octal(header[124:136])
        self.left = size
        self.pad = (-size) % BLOCK
        return name, size

    def read(self, n):
        n = min(n, self.left)
        data = self.f.read(n) if n else b""
        if len(data) < n:
            raise BundleError("archive truncated inside an entry")
        self.left -= len(data)
        return data

    def read_all(self, limit):
        if self.left > limit:
            raise BundleError("entry too large")
        return self.read(self.left)

    def skip(self):
        while self.left:
            self.read(min(self.left, 1024))
        if self.pad:
            if len(self.f.read(self.pad)) < self.pad:
                raise BundleError("archive truncated in padding")
            self.pad = 0


MAX_DEPTH = 3                   # {"files": [[name, size, sha256]]}


def _depth(data):
    """The deepest nesting of JSON arrays/objects in `data` (bytes), strings skipped: checked
    before json.loads, which recurses (RecursionError on CPython, a crash on a device)."""
    if isinstance(data, str):
        data = data.encode()
    depth = top = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 92:       # backslash
                esc = True
            elif b == 34:       # quote
                in_str = False
        elif b == 34:
            in_str = True
        elif b == 91 or b == 123:   # [ {
            depth += 1
            if depth > top:
                top = depth
                if top > MAX_DEPTH:
                    return top
        elif b == 93 or b == 125:   # ] }
            depth -= 1
    return top


def parse_manifest(data):
    if _depth(data) > MAX_DEPTH:
        raise BundleError("manifest nested too deep")
    try:
        m = json.loads(data)
    except (ValueError, RuntimeError):      # UnicodeError included; RecursionError too
        raise BundleError("manifest is not JSON")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError("unknown manifest format")
    version = m.get("version")
    if not isinstance(version, str) or parse_version(version) is None:
        raise BundleError("bad version in manifest")
    files = m.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise BundleError("bad file list in manifest")
    seen = set()
    dirs = set()
    for entry in files:
        if not isinstance(entry, list) or len(entry) != 3:
            raise BundleError("bad file entry in manifest")
        name, size, digest = entry
        check_name(name)
        if name in seen:
            raise BundleError("file %s listed twice" % name)
        seen.add(name)
        i = name.find("/")
        while i > 0:            # a file cannot also be a directory of another ("a", "a/b")
            dirs.add(name[:i])
            i = name.find("/", i + 1)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE:
            raise BundleError("bad size for %s" % name)
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError("bad sha256 for %s" % name)
    for name in seen:
        if name in dirs:
            raise BundleError("file %s is also a directory in manifest" % name)
    return m


def parse_version(text):
    """(major, minor, patch) of "1.2.3", or None."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3:
        return None
    out = []
    for p in parts:
        if not p or len(p) > 6 or any(c not in "0123456789" for c in p):
            return None
        out.append(int(p))
    return tuple(out)


def open_bundle(f, release_pubkey):
    """Read and check the signed manifest at the start of bundle file `f`.

    Returns (manifest dict, manifest bytes, signature, reader positioned at the first
    application file). Raises BundleError when unsigned, tampered or malformed.
    """
    r = Reader(f)
    entry = r.next()
    if entry is None or entry[0] != "manifest.json":
        raise BundleError("bundle does not start with manifest.json")
    raw = r.read_all(MAX_MANIFEST)
    entry = r.next()
    if entry is None or entry[0] != "manifest.sig":
        raise BundleError("bundle is not signed (no manifest.sig)")
    sig = r.read_all(80)
    if not p256.verify(release_pubkey, raw, sig):
        raise BundleError("manifest signature does not verify with the release key")
    return parse_manifest(raw), raw, sig, r


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass          # exists already (a stale file there makes the open() below fail)


def _copy_entry(r, chunk, out):
    """Hex SHA-256 of the rest of the current entry, written to `out` as read (unless None)."""
    h = hashlib.sha256()
    while True:
        data = r.read(chunk)
        if not data:
            break
        h.update(data)
        if out is not None:
            out.write(data)
    return _hex(h.digest())


def install(f, release_pubkey, dest=None, chunk=1024):
    """Check bundle `f` completely; with `dest`, unpack its files under that directory.

    Every file is hashed while read (and written); a mismatch, a missing, extra or
    reordered entry raises BundleError, and dest is then incomplete: the caller discards
    it. Returns the manifest. On success dest also holds manifest.json and manifest.sig,
    so the application can report what it is and the device can re-check it.
    """
    m, raw, sig, r = open_bundle(f, release_pubkey)
    made = set()
    for name, size, digest in m["files"]:
        entry = r.next()
        if entry is None:
            raise BundleError("bundle ends before %s" % name)
        if entry[0] != "app/" + name:
            raise BundleError("unexpected entry %s (manifest expects app/%s)" % (entry[0], name))
        if entry[1] != size:
            raise BundleError("size of %s is %d, manifest says %d" % (name, entry[1], size))
        if dest is None:
            got = _copy_entry(r, chunk, None)
        else:
            path = dest
            for part in name.split("/")[:-1]:
                path = path + "/" + part
                if path not in made:
                    _mkdir(path)
                    made.add(path)
            with open(dest + "/" + name, "wb") as out:
                got = _copy_entry(r, chunk, out)
        if got != digest:
            raise BundleError("sha256 of %s does not match the manifest" % name)
    if r.next() is not None:
        raise BundleError("bundle has entries the manifest does not list")
    if dest is not None:
        for name, data in (("manifest.json", raw), ("manifest.sig", sig)):
            with open(dest + "/" + name, "wb") as out:
                out.write(data)
    return m


def verify(f, release_pubkey):
    """Check a bundle without unpacking it: its manifest, or BundleError."""
    return install(f, release_pubkey, None)
