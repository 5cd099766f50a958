"""`egs-sim device`: the real meter firmware, running under the venv's MicroPython unix port.

Nothing is re-implemented here: the firmware in firmware/ runs as it would on an ESP32,
with the unix HAL (firmware/hal/unix.py) in place of the board: the meter link is a tty
path (the emulator's pseudo-terminal) or tcp:HOST:PORT, the key and counters are files in
the state directory, the console is the process's stdin/stdout.

    egs-sim device [--config FILE] [--meter tcp:HOST:PORT|TTY] [--meter-model sdm630]
                   [--broker HOST:PORT] [--community ID] [--device-id ID] [--interval S]
                   [--state-dir DIR] [--mqtt-user U --mqtt-password-file F] [--pty LINK]

Options override the file; the merged configuration is validated (firmware/config.py) and
written to <state-dir>/config.json, where the firmware reads it. Without a key in the state
directory the device generates one at boot, so its public key is new; it is printed to
stderr by the firmware and published in the retained status message. Without any
configuration the device starts unprovisioned, for `egs-gw device provision --port LINK`
on its --pty console. One device runs per state directory (a flock on <state-dir>/lock,
inherited by the firmware), and SIGTERM/SIGINT are passed on to the firmware and waited for.

DeviceProcess is the same thing for tests and the demo: start/kill (SIGKILL: a power cut)/
restart, and request() to talk the provisioning protocol over the console.
"""
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from sim.services import ROOT, Service, micropython

DEFAULT_HEAP = "100K"
REBOOT_EXIT = 75           # firmware/hal/unix.py: "reset me"


def build_config(base=None, *, meter=None, meter_model=None, meter_unit=None, broker=None,
                 community=None, device_id=None, interval=None, mqtt_user=None,
                 mqtt_password=None, keepalive=None, backoff_max=None, status_interval=None,
                 log_max_bytes=None, log_segments=None):
    """A validated firmware configuration: `base` (dict) with the given options on top."""
    from firmware import config

    cfg = json.loads(json.dumps(base or {}))
    if not isinstance(cfg, dict):
        raise config.ConfigError("the configuration must be a JSON object")

    def put(section, key, value):
        if value is None:
            return
        if section is None:
            cfg[key] = value
        else:
            sec = cfg.setdefault(section, {})
            if not isinstance(sec, dict):
                raise config.ConfigError(f"{section} must be a JSON object")
            sec[key] = value

    if broker is not None:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise config.ConfigError(f"--broker must be HOST:PORT, got {broker!r}")
        put("broker", "host", host)
        put("broker", "port", int(port))
    put("meter", "port", meter)
    put("meter", "model", meter_model)
    put("meter", "unit", meter_unit)
    put(None, "community", community)
    put(None, "device_id", device_id)
    put(None, "interval_s", interval)
    put(None, "status_interval_s", status_interval)
    put("mqtt", "username", mqtt_user)
    put("mqtt", "password", mqtt_password)
    put("mqtt", "keepalive_s", keepalive)
    put("mqtt", "backoff_max_s", backoff_max)
    put("log", "max_bytes", log_max_bytes)
    put("log", "segments", log_segments)
    return config.validate(cfg)


def write_config(state_dir, cfg):
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    path = state / "config.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=1))
    os.chmod(tmp, 0o600)              # it holds the MQTT password
    tmp.replace(path)
    return path


ROMFS_SLACK = 8192       # VfsRom object, mount table, the boot snippet's own code; the
                         # snippet pins what is left over in a ballast bytearray

# The unix stand-in for an ESP32 booting from its ROMFS partition (MicroPython >= 1.25:
# `mpremote romfs deploy` puts .mpy files in flash, executed in place, mounted at /rom).
# On unix the image has to sit in a bytearray on the heap, so the heap is the budget plus
# the image: what the firmware itself can use is the budget, as on the device.
ROMFS_MOUNT = """\
import gc, sys, vfs
f = open(sys.argv[1], "rb")
f.seek(0, 2)
rom = bytearray(f.tell())
f.seek(0)
f.readinto(rom)
f.close()
vfs.mount(vfs.VfsRom(rom), "/rom")
sys.path[:] = ["/rom", ".frozen"]
del f
gc.collect()
ballast = bytearray(max(0, gc.mem_free() - int(sys.argv[2]) - 64))
gc.collect()
sys.stderr.write("romfs %d bytes at /rom; heap for the firmware %d bytes\\n"
                 % (len(rom), gc.mem_free()))
"""
ROMBOOT = ROMFS_MOUNT + """\
from firmware.main import main
main(sys.argv)
"""


def device_sources():
    """What goes into the device image: the unix port's files of the one list the release
    bundle is built from (firmware/manifest.py)."""
    from firmware import manifest

    return manifest.files("unix")


def mpremote():
    from sim.services import find_tool

    return find_tool("mpremote", [ROOT / ".venv/bin/mpremote"])


def build_romfs():
    """The firmware as a ROMFS image of .mpy files (`mpremote romfs build`, which compiles
    with mpy-cross), cached under build/romfs by the hash of the sources."""
    digest = hashlib.sha256()
    files = device_sources()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    out_dir = ROOT / "build" / "romfs"
    image = out_dir / f"firmware-{digest.hexdigest()[:16]}.romfs"
    if image.exists():
        return image
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        stage = Path(tmp) / "src"
        for rel in files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, stage / rel)
        tmp_image = Path(tmp) / "image.romfs"
        proc = subprocess.run([mpremote(), "romfs", "-o", str(tmp_image), "build", str(stage)],
                              capture_output=True, text=True, check=False)
        if proc.returncode or not tmp_image.exists():
            raise RuntimeError(f"mpremote romfs build failed: {proc.stdout}{proc.stderr}")
        tmp_image.replace(image)
    for old in out_dir.glob("firmware-*.romfs"):
        if old != image and time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    return image


def heap_bytes(size):
    """'100K' -> 102400 (MicroPython's -X heapsize syntax)."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * mult


def romfs_argv(code, heapsize, *args):
    """micropython command line running `code` (which starts with ROMFS_MOUNT) with the
    firmware image mounted at /rom and `heapsize` (bytes or "100K") left for the code;
    sys.argv[3:] are `args`."""
    image = build_romfs()
    budget = heap_bytes(heapsize)
    total = budget + image.stat().st_size + ROMFS_SLACK
    return [micropython(), "-X", f"heapsize={total}", "-c", code, str(image), str(budget),
            *map(str, args)]


def firmware_argv(state_dir, heapsize=None, time_offset_ms=0):
    """micropython command line running the firmware from its ROMFS image with `heapsize`
    (default DEFAULT_HEAP) left for the firmware itself; its clock runs `time_offset_ms`
    ahead of the host's (negative: behind)."""
    extra = ("--time-offset-ms", int(time_offset_ms)) if time_offset_ms else ()
    return romfs_argv(ROMBOOT, heapsize or DEFAULT_HEAP,
                      "--state-dir", Path(state_dir).resolve(), *extra)


def firmware_env():
    return dict(os.environ, MICROPYPATH=".frozen")


class DeviceProcess(Service):
    """One emulated device: the firmware under `micropython -X heapsize=<heap>`.

    The console (stdin/stdout) is a pair of pipes: request() sends one JSON line and
    returns the reply. Firmware log lines (stderr) go to <state_dir>/device.log.
    """

    def __init__(self, state_dir, config=None, heapsize=DEFAULT_HEAP, console_fd=None,
                 time_offset_ms=0):
        """console_fd: a file descriptor (e.g. a pty master) to use as the console instead
        of the pipes; request() is then not available. time_offset_ms: the device's clock
        runs that far ahead of the host's (e.g. to be just before a quarter hour)."""
        self.console_fd = console_fd
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_config(self.state_dir, build_config(config))
        self.heapsize = heapsize
        self.starts = 0
        self.reboots = 0
        self._replies = None
        self._lock = threading.RLock()
        self._halted = False
        super().__init__(firmware_argv(self.state_dir, heapsize, time_offset_ms),
                         log_path=self.state_dir / "device.log", env=firmware_env())

    def start(self):
        self._halted = False
        console = subprocess.PIPE if self.console_fd is None else self.console_fd
        # Its own process group (so it can be stopped as a whole) but not its own session:
        # a session leader that opens the meter tty makes it its controlling terminal and
        # is killed by SIGHUP when the meter (or its USB adapter) goes away.
        with open(self.log_path, "ab") as log:     # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, stdin=console, stdout=console, stderr=log,
                                         cwd=ROOT, env=self.env, process_group=0)
        self.starts += 1
        if self.console_fd is None:
            self._replies = queue.Queue()
            threading.Thread(target=self._read, args=(self.proc, self._replies),
                             daemon=True).start()
        threading.Thread(target=self._supervise, args=(self.proc,), daemon=True).start()
        from sim import services
        services._RUNNING.add(self)
        return self

    def _supervise(self, proc):
        """A device that reboots exits with REBOOT_EXIT: power it up again, as the reset
        line of an ESP32 would."""
        rc = proc.wait()
        with self._lock:
            if rc == REBOOT_EXIT and self.proc is proc and not self._halted:
                self.reboots += 1
                self.start()

    @staticmethod
    def _read(proc, replies):
        from protocol import messages_gateway

        for line in proc.stdout:
            try:
                reply = messages_gateway.parse_reply(line)
            except messages_gateway.MessageError:
                reply = {"ok": False, "error": "unparseable reply",
                         "raw": line.strip().decode(errors="replace")}
            if reply is not None:
                replies.put(reply)

    def request(self, obj, timeout=15.0):
        """Send one console command (a request dict, or a raw line of anything for hostile
        input) and return the device's reply."""
        from protocol import messages_gateway

        if isinstance(obj, (str, bytes)):
            line = (obj.encode() if isinstance(obj, str) else obj) + b"\n"
        else:
            line = messages_gateway.console_request(obj)
        deadline = time.monotonic() + timeout
        while True:                       # across a reboot the console comes back
            proc, replies = self.proc, self._replies
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
                break
            except (BrokenPipeError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            return replies.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"no console reply to {line[:60]!r} within {timeout}s; "
                               f"device log:\n{self.log_text()[-2000:]}") from None

    def pubkey(self):
        reply = self.request({"cmd": "pubkey"})
        if not reply.get("ok"):
            raise RuntimeError(f"device has no key: {reply}")
        return reply["pubkey"]

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        with self._lock:
            self._halted = True
            super().stop(sig, timeout)

    def kill(self):
        """SIGKILL: what a power cut looks like to the firmware."""
        with self._lock:
            self._halted = True
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        from sim import services
        services._RUNNING.discard(self)

    def restart(self):
        self.kill()
        return self.start()

    def log_text(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.alive:
                break
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in device log:\n{self.log_text()[-2000:]}")


LOCK_FILE = "lock"         # in the state directory: held (flock) while a device runs on it
STOP_TIMEOUT_S = 10.0      # after SIGTERM/SIGINT, how long the firmware gets before SIGKILL


class StateDirBusy(RuntimeError):
    """Another process runs a device on this state directory."""


def lock_state_dir(state_dir):
    """Take <state_dir>/lock (fcntl.flock, exclusive) for this process and its firmware child;
    → the open descriptor. The kernel drops the lock when the last holder exits, so a
    device process killed with SIGKILL never leaves a stale lock behind."""
    import fcntl

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = state / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[0]}" if holder else "another process"
        raise StateDirBusy(f"state directory {state} is in use by {who} (egs-sim device); "
                           "stop it first, or give another --state-dir") from None
    note_lock_holders(fd, os.getpid())
    return fd


def note_lock_holders(fd, *pids):
    os.ftruncate(fd, 0)
    os.pwrite(fd, (" ".join(map(str, pids)) + "\n").encode(), 0)


def open_pty_console(link):
    """A pseudo-terminal for the firmware's console: → (master, slave, tty path). `link`
    becomes a symlink to the slave (like socat's link=), which pyserial opens as it would
    /dev/ttyUSB0. The caller keeps the slave open, as a USB serial chip stays on the bus,
    so the firmware never sees its console hang up."""
    import tty

    link = Path(link)
    if link.is_symlink():
        link.unlink()           # a stale link of an earlier run
    elif link.exists():
        raise click.UsageError(f"--pty {link} exists and is not a symlink")
    master, slave = os.openpty()
    tty.setraw(slave)           # no echo of the firmware's replies back into it
    path = os.ttyname(slave)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path, link)
    return master, slave, path


@click.command("device")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON configuration (firmware/config.example.json); options override it.")
@click.option("--meter", help="Meter link: a tty path or tcp:HOST:PORT.")
@click.option("--meter-model", help="sdm630, sdm120, sdm72, abb_b23 or ddsu666.")
@click.option("--meter-unit", type=int, help="Modbus unit address of the meter.")
@click.option("--broker", help="MQTT broker HOST:PORT.")
@click.option("--community", help="Community id (topic egs/v1/<community>/...).")
@click.option("--device-id", help="Device id (topic .../<device>/...).")
@click.option("--interval", type=float, help="Reading interval in seconds (fractions allowed).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Key, counters, config and flash log. Default .state/devices/<device-id>.")
@click.option("--mqtt-user", help="Per-device MQTT user name.")
@click.option("--mqtt-password-file", type=click.Path(dir_okay=False, allow_dash=True),
              help="File holding the per-device MQTT password, - for stdin.")
@click.option("--mqtt-password", help="The password itself (visible in shell history and ps; "
              "warned about).")
@click.option("--pty", "pty_link", type=click.Path(dir_okay=False),
              help="Console on a pseudo-terminal, reachable at this symlink (for "
                   "`egs-gw device provision --port LINK`) instead of stdin/stdout.")
@click.option("--heapsize", default=DEFAULT_HEAP, show_default=True,
              help="MicroPython heap (an ESP32 has about 100K free).")
def command(config_file, meter, meter_model, meter_unit, broker, community, device_id,
            interval, state_dir, mqtt_user, mqtt_password_file, mqtt_password, pty_link, heapsize):
    """Run the real firmware under MicroPython (console on stdin/stdout, or --pty).

    Without a configuration (no --config, none in the state directory, no options) the
    device starts unprovisioned and waits on its console for `egs-gw device provision`.
    SIGTERM/SIGINT are passed to the firmware, which is waited for; one device at a time
    runs on a state directory."""
    from firmware import config
    from gateway.cliutil import secret_option

    if mqtt_password_file == "-" and not pty_link:
        raise click.UsageError("--mqtt-password-file -: stdin is the device's console (use --pty)")
    mqtt_password = secret_option(mqtt_password, mqtt_password_file, "--mqtt-password",
                                  allow_empty=True)
    base = {}
    if config_file:
        try:
            base = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as e:
            raise click.UsageError(f"cannot read --config {config_file}: {e}") from None
        if not isinstance(base, dict):
            raise click.UsageError(f"--config {config_file} must hold a JSON object")
    if state_dir is None:
        name = device_id or base.get("device_id")
        if not name:
            raise click.UsageError("give --state-dir or --device-id")
        state_dir = ROOT / ".state" / "devices" / str(name)
    try:
        lock_fd = lock_state_dir(state_dir)
    except StateDirBusy as e:
        raise click.ClickException(str(e)) from None
    existing = Path(state_dir) / "config.json"
    if not config_file and existing.exists():
        try:
            base = json.loads(existing.read_text())
        except ValueError:
            base = {}
        if not isinstance(base, dict):
            base = {}
    options = {"meter": meter, "meter_model": meter_model, "meter_unit": meter_unit,
               "broker": broker, "community": community, "device_id": device_id,
               "interval": interval, "mqtt_user": mqtt_user, "mqtt_password": mqtt_password}
    if base or any(v is not None for v in options.values()):
        try:
            cfg = build_config(base, **options)
        except config.ConfigError as e:
            raise click.UsageError(str(e)) from None
        path = write_config(state_dir, cfg)
        what = f"device {cfg['device_id']}: config {path}"
    else:
        os.chmod(state_dir, 0o700)
        what = f"device in {state_dir}: unprovisioned"
    console, fds = None, []
    if pty_link:
        master, slave, tty_path = open_pty_console(pty_link)
        console, fds = master, [master, slave]
        click.echo(f"{what}; console on {pty_link} ({tty_path})", err=True)
    else:
        click.echo(f"{what}; console on stdin/stdout "
                   f"(one JSON command per line, e.g. {{\"cmd\":\"status\"}})", err=True)
    argv = firmware_argv(state_dir, heapsize)
    sys.exit(_run_firmware(argv, console, lock_fd, pty_link, fds))


def _run_firmware(argv, console, lock_fd, pty_link, fds):
    """Run the firmware until it exits (again after a reboot); a SIGTERM/SIGINT/SIGHUP is
    passed on to it and it is waited for (SIGKILL after STOP_TIMEOUT_S). → exit status."""
    stopping = []
    proc = None

    def forward(signum, frame):
        stopping.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    rc = 0
    try:
        while not stopping:
            # the child inherits the lock: a firmware outliving this process keeps its dir
            proc = subprocess.Popen(argv, cwd=ROOT, env=firmware_env(), stdin=console,
                                    stdout=console, pass_fds=(lock_fd,))
            note_lock_holders(lock_fd, os.getpid(), proc.pid)
            if stopping:
                proc.send_signal(stopping[-1])
            deadline = None
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if stopping:
                        deadline = deadline or time.monotonic() + STOP_TIMEOUT_S
                        if time.monotonic() > deadline:
                            proc.kill()
            if rc != REBOOT_EXIT:
                break
            if not stopping:
                click.echo("device rebooting", err=True)
    finally:
        if pty_link and Path(pty_link).is_symlink():
            Path(pty_link).unlink()
        for fd in fds:
            os.close(fd)
    if stopping:
        return 130 if stopping[0] == signal.SIGINT else 0
    return rc if rc >= 0 else 128 - rc
