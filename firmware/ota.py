"""Signed over-the-air updates of the application, device side.

The gateway offers a release on `.../cmd`:

    {"cmd": "update", "url": "http://<gateway>:<port>/<name>.tar", "version": "0.2.0",
     "size": <bytes>}

and the device, from its main loop (never inside the MQTT callback):
1. downloads the bundle into <root>/ota.tar in chunks (HTTP/1.0 Range requests of CHUNK
   bytes, each retried; the watchdog is fed between chunks). Why HTTP and not MQTT: the
   device paces the transfer and resumes at the byte where a chunk failed, with one
   small request per chunk; the broker's ACL stays as it is (devices read only their
   ack/cmd topics). The transport needs no integrity of its own: everything is checked;
2. checks it (firmware/bundle.py): the manifest signature against the release public
   key the device was installed with (<root>/release.pub, written by `egs-gw device
   flash`, never by the network), every file's size and SHA-256, no extra or missing
   file, the port, and that the version is newer than the running one (a signed old
   release cannot be replayed to downgrade a device);
3. unpacks it into the slot that is not running (firmware/boot_select.py: A/B), while
   checking, then marks that slot pending and resets. The running slot is never written.
4. The new version gets one boot: after its first signed reading it confirms itself
   (`reading_signed`); a crash, hang, power cut or meter-less boot before that rolls
   back to the old slot on the next start.
The flash log, the sequence counter, the key and the configuration live outside the
slots, so every update and rollback keeps them.

A failure at any step before the switch leaves the running version as it was and is
reported in the status message ("ota": {"state": "failed", "error": ...}).

On the ESP32, MicroPython itself sits in an OTA partition pair; after the application is
confirmed, the partition is confirmed too (firmware/hal/esp32_ota.py), so that a
MicroPython image written by the same mechanism would roll back the same way.
"""
import os

from firmware import boot_select, bundle

CHUNK = 8192
RETRIES = 3
MAX_BUNDLE = 256 * 1024
STAGING = "ota.tar"
KEY_FILE = "release.pub"


class OtaError(Exception):
    pass


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


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
    """(host, port, path) of an http:// URL."""
    if not isinstance(url, str) or not url.startswith("http://") or len(url) > 300:
        raise OtaError("update url must be http://host:port/path")
    rest = url[7:]
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = hostport, 80
    if ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise OtaError("bad port in update url")
        port = int(p)
    if not host:
        raise OtaError("no host in update url")
    return host, port, path


def _read_response(sock, limit):
    """(status, headers dict, body) of an HTTP/1.0 response, body at most `limit` bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(512)
        if not part:
            raise OtaError("connection closed in HTTP headers")
        data += part
        if len(data) > 4096:
            raise OtaError("HTTP headers too long")
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2 or not parts[1].isdigit():
        raise OtaError("bad HTTP status line")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    while len(body) < limit:
        part = sock.recv(limit - len(body) if limit - len(body) < 2048 else 2048)
        if not part:
            break
        body += part
    return int(parts[1]), headers, body


class Updater:
    """The update state machine of one device; `root` holds slots, boot.json, release.pub."""

    def __init__(self, hal, fw_version, root=None):
        self.hal = hal
        self.fw_version = fw_version
        self.root = getattr(hal, "state_dir", "") if root is None else root
        self.job = None
        self.state = "idle"
        self.error = None
        self.target = None
        self.slot, self.confirmed = boot_select.running(self.root)
        self.rolled_back = boot_select.load(self.root).get("rolled_back")
        staging = self._path(STAGING)
        if _exists(staging):                      # an update cut short by a reset
            try:
                os.remove(staging)
            except OSError:
                pass

    def _path(self, name):
        return boot_select._path(self.root, name)

    def release_key(self):
        try:
            with open(self._path(KEY_FILE)) as f:
                pub = bytes.fromhex(f.read().strip())
        except (OSError, ValueError):
            return None
        return pub if len(pub) == 65 else None

    # ------------------------------------------------------------------ commands
    def command(self, msg):
        """Accept an {"cmd": "update", ...} message; False when it is malformed."""
        url = msg.get("url")
        version = msg.get("version")
        size = msg.get("size")
        try:
            parse_url(url)
        except OtaError:
            return False
        if not isinstance(version, str) or bundle.parse_version(version) is None:
            return False
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BUNDLE:
            return False
        if self.job is not None and self.job["version"] == version:
            return True
        self.job = {"url": url, "version": version, "size": size}
        self.state = "queued"
        self.error = None
        self.target = version
        return True

    def status(self):
        out = {"state": self.state, "slot": self.slot, "confirmed": self.confirmed}
        if self.target:
            out["target"] = self.target
        if self.error:
            out["error"] = self.error
        if self.rolled_back:
            out["rolled_back"] = self.rolled_back
        return out

    # ------------------------------------------------------------------ the update
    def run(self, before_reset=None):
        """Carry out the queued job. On success stages the new slot and resets (does not
        return on the ESP32; raises SystemExit(RESTART_EXIT) on unix). On failure records
        the error and returns False; the running version is untouched."""
        job = self.job
        if job is None:
            return False
        self.job = None
        staging = self._path(STAGING)
        try:
            if not self.confirmed:
                raise OtaError("running version not confirmed yet")
            if job["version"] == self.fw_version or not newer(job["version"], self.fw_version):
                raise OtaError("version %s is not newer than %s" % (job["version"],
                                                                    self.fw_version))
            pub = self.release_key()
            if pub is None:
                raise OtaError("no release key installed")
            self.state = "downloading"
            self.download(job, staging)
            self.state = "installing"
            slot = boot_select.other(self.slot)
            dest = boot_select.slot_dir(self.root, slot)
            _remove_tree(dest)
            os.mkdir(dest)
            with open(staging, "rb") as f:
                m = bundle.install(f, pub, dest)
            if m["version"] != job["version"]:
                raise OtaError("bundle is version %s, offered as %s" % (m["version"],
                                                                        job["version"]))
            if m.get("port") != getattr(self.hal, "name", None):
                raise OtaError("bundle is for port %s" % m.get("port"))
            boot_select.stage(self.root, slot)
        except (OtaError, bundle.BundleError, OSError, ValueError, KeyError) as e:
            self.state = "failed"
            self.error = str(e) or type(e).__name__
            self.hal.log("update to %s refused: %s" % (job["version"], self.error))
            try:
                os.remove(staging)
            except OSError:
                pass
            return False
        try:
            os.remove(staging)
        except OSError:
            pass
        self.state = "restarting"
        self.hal.log("update %s staged in slot %s; restarting" % (job["version"], slot))
        if before_reset is not None:
            before_reset()
        self.reset()
        return True

    def download(self, job, staging):
        host, port, path = parse_url(job["url"])
        size = job["size"]
        with open(staging, "wb") as out:
            offset = 0
            while offset < size:
                n = CHUNK if size - offset > CHUNK else size - offset
                data = None
                last = None
                for _ in range(RETRIES):
                    self.hal.feed_watchdog()
                    try:
                        data = self._get(host, port, path, offset, n)
                        break
                    except (OSError, OtaError) as e:
                        last = e
                if data is None:
                    raise OtaError("download failed at byte %d: %s" % (offset, last))
                out.write(data)
                offset += len(data)

    def _get(self, host, port, path, offset, n):
        sock = self.hal.connect_tcp(host, port, False, "")
        try:
            req = "GET %s HTTP/1.0\r\nHost: %s\r\nRange: bytes=%d-%d\r\n\r\n" % (
                path, host, offset, offset + n - 1)
            sock.send(req.encode())
            status, headers, body = _read_response(sock, n)
        finally:
            sock.close()
        if status != 206 and not (status == 200 and offset == 0):
            raise OtaError("HTTP status %d" % status)
        if len(body) != n:
            raise OtaError("short chunk: %d of %d bytes" % (len(body), n))
        return body

    def reset(self):
        if getattr(self.hal, "name", None) == "esp32":
            self.hal.reboot()
        raise SystemExit(boot_select.RESTART_EXIT)

    # ------------------------------------------------------------------ confirmation
    def reading_signed(self):
        """After a signed, logged reading: a version on trial confirms itself."""
        if self.confirmed:
            return False
        if boot_select.confirm(self.root):
            self.confirmed = True
            self.state = "confirmed"
            self.hal.log("version %s confirmed in slot %s" % (self.fw_version, self.slot))
            if getattr(self.hal, "name", None) == "esp32":
                from firmware.hal import esp32_ota

                esp32_ota.confirm()
            return True
        return False


def newer(a, b):
    va, vb = bundle.parse_version(a), bundle.parse_version(b)
    return va is not None and vb is not None and va > vb
