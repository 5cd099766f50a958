"""Signed over-the-air updates of the application, device side (docs/installer.md, section 3).

On an `update` offer (protocol/offer.py) the device, from its main loop and never inside
the MQTT callback, downloads the bundle into <root>/ota.tar, checks it (protocol/bundle.py)
against the release key it was installed with (<root>/release.pub, written by `egs-gw
device flash`, never by the network), refuses a version not newer than its own (no replay
of an old signed release), unpacks it into the slot it is not running
(firmware/boot_select.py: A/B) and resets into that slot's one trial boot. The running
slot is never written: a failure at any step before the switch leaves the running version
as it was, reported in the status ("ota": {"state": "failed", "error": ...}). The flash
log, the sequence counter, the key and the configuration live outside the slots, so every
update and rollback keeps them.
"""
import os

from firmware import boot_select
from protocol import bundle, offer

CHUNK = 4096
RETRIES = 3
STAGING = "ota.tar"
KEY_FILE = "release.pub"


class OtaError(Exception):
    pass


def _remove_tree(path):
    try:
        names = os.listdir(path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for name in names:
        child = path + "/" + name
        if os.stat(child)[0] & 0x4000:
            _remove_tree(child)
        else:
            os.remove(child)
    os.rmdir(path)


def parse_url(url):
    """(host, port, path) of an http:// URL (protocol.offer.parse_url); OtaError."""
    try:
        return offer.parse_url(url)
    except offer.MessageError as e:
        raise OtaError(str(e))


def _read_head(sock):
    """(status, rest of the bytes already received) after reading an HTTP/1.0 head."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(256)
        if not part:
            raise OtaError("connection closed in HTTP headers")
        data += part
        if len(data) > 4096:
            raise OtaError("HTTP headers too long")
    head, body = data.split(b"\r\n\r\n", 1)
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[1].isdigit():
        raise OtaError("bad HTTP status line")
    return int(parts[1]), body


def _root(hal):
    return getattr(hal, "state_dir", "")


def release_key(root):
    """The release public key installed with the device (<root>/release.pub), or None."""
    try:
        with open(boot_select._path(root, KEY_FILE)) as f:
            pub = bytes.fromhex(f.read().strip())
    except (OSError, ValueError):
        return None
    return pub if len(pub) == 65 else None


def check_command(msg):
    """The job of an {"cmd": "update", ...} message (protocol.offer.parse); OtaError when
    malformed."""
    try:
        return offer.parse(msg)
    except offer.MessageError as e:
        raise OtaError(str(e))


def run(hal, fw_version, msg, status, before_reset=None):
    """Carry out one update command. `status` (the "ota" dict of the status message) is
    updated in place. On success the new slot is staged and the device resets (no return
    on the ESP32; SystemExit(RESTART_EXIT) on unix). On failure returns False with
    status["state"] == "failed" and the reason in status["error"]; the running version
    and its slot are untouched."""
    root = _root(hal)
    staging = boot_select._path(root, STAGING)
    status.pop("error", None)
    try:
        job = check_command(msg)
        if job["version"] == fw_version:
            return False              # a repeated offer of what already runs: nothing to do
        status["target"] = job["version"]
        slot, confirmed = boot_select.running(root)
        if not confirmed:
            raise OtaError("running version not confirmed yet")
        if not newer(job["version"], fw_version):
            raise OtaError("version %s is not newer than %s" % (job["version"], fw_version))
        pub = release_key(root)
        if pub is None:
            raise OtaError("no release key installed")
        status["state"] = "downloading"
        download(hal, job, staging)
        status["state"] = "installing"
        new = boot_select.other(slot)
        dest = boot_select.slot_dir(root, new)
        _remove_tree(dest)
        os.mkdir(dest)
        with open(staging, "rb") as f:
            m = bundle.install(f, pub, dest)
        if m["version"] != job["version"]:
            raise OtaError("bundle is version %s, offered as %s" % (m["version"], job["version"]))
        if m.get("port") != getattr(hal, "name", None):
            raise OtaError("bundle is for port %s" % m.get("port"))
        boot_select.stage(root, new)
    except (OtaError, bundle.BundleError, OSError, ValueError, KeyError, MemoryError) as e:
        status["state"] = "failed"
        status["error"] = (str(e) or type(e).__name__)[:120]
        hal.log("update refused: %s" % status["error"])
        _remove_tree(staging)
        return False
    _remove_tree(staging)
    status["state"] = "restarting"
    hal.log("update %s staged in slot %s; restarting" % (job["version"], new))
    if before_reset is not None:
        before_reset()
    reset(hal)
    return True


# Why HTTP and not MQTT: the device paces the transfer and resumes at the byte where a chunk
# failed, with one small Range request per chunk; the broker's ACL stays as it is (devices
# read only their ack/cmd topics). The transport needs no integrity of its own: everything
# is checked (protocol/bundle.py). The watchdog is fed between chunks.
def download(hal, job, staging):
    """Fetch the bundle into `staging`, CHUNK bytes per request, each tried RETRIES times.
    Data goes straight from the socket to the file through one small buffer: the heap
    has no room for a whole chunk."""
    host, port, path = parse_url(job["url"])
    size = job["size"]
    buf = bytearray(1024)
    with open(staging, "wb") as out:
        offset = 0
        while offset < size:
            n = min(size - offset, CHUNK)
            last = None
            for _ in range(RETRIES):
                hal.feed_watchdog()
                out.seek(offset)
                try:
                    _get(hal, host, port, path, offset, n, out, buf)
                    last = None
                    break
                except (OSError, OtaError) as e:
                    last = e
            if last is not None:
                raise OtaError("download failed at byte %d: %s" % (offset, last))
            offset += n


def _get(hal, host, port, path, offset, n, out, buf):
    sock = hal.connect_tcp(host, port, False, "")
    try:
        req = "GET %s HTTP/1.0\r\nHost: %s\r\nRange: bytes=%d-%d\r\n\r\n" % (
            path, host, offset, offset + n - 1)
        sock.send(req.encode())
        status, first = _read_head(sock)
        if status != 206 and not (status == 200 and offset == 0):
            raise OtaError("HTTP status %d" % status)
        got = len(first)
        if got > n:
            raise OtaError("chunk longer than asked")
        out.write(first)
        view = memoryview(buf)
        while got < n:
            k = sock.readinto(view[:min(len(buf), n - got)])
            if not k:
                break
            out.write(view[:k])
            got += k
    finally:
        sock.close()
    if got != n:
        raise OtaError("short chunk: %d of %d bytes" % (got, n))


def reset(hal):
    if getattr(hal, "name", None) == "esp32":
        hal.reboot()
    raise SystemExit(boot_select.RESTART_EXIT)


def newer(a, b):
    va, vb = bundle.parse_version(a), bundle.parse_version(b)
    return va is not None and vb is not None and va > vb
