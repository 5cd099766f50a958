"""Start and stop the real services the tests and the demo need: mosquitto, Anvil.

Every process is started on a free loopback port, in its own process group, and is
registered so that it is stopped at exit even when a test fails or the demo is
interrupted. Nothing here is a fake: these are the Debian mosquitto and the npm Anvil.
"""
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RUNNING = set()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0, proc=None, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for(predicate, timeout=20.0, what="condition", interval=0.05):
    """Poll until predicate() is truthy and return its value. Not a timing assertion: the
    timeout only bounds a test or bench step that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def find_tool(name, extra=()):
    for candidate in extra:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if not found:
        raise FileNotFoundError(f"{name} not found: run `make setup`")
    return found


class Service:
    """A child process in its own process group, stopped at exit."""

    def __init__(self, argv, log_path=None, env=None):
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = env
        self.proc = None

    def start(self):
        with (open(self.log_path, "ab") if self.log_path
              else contextlib.nullcontext(subprocess.DEVNULL)) as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env)
        _RUNNING.add(self)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _RUNNING.discard(self)

    def kill(self):
        self.stop(signal.SIGKILL)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


class Mosquitto(Service):
    """mosquitto with a generated config in `workdir`.

    With `config_text` None, an open loopback listener (anonymous) on `port` is used;
    otherwise the given config text is written as-is (see `egs-gw broker config`).
    """

    def __init__(self, workdir, port=None, config_text=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        conf = self.workdir / "mosquitto.conf"
        if config_text is None:
            config_text = (
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence true\npersistence_location {self.workdir}/\n"
                "max_queued_messages 100000\nmax_inflight_messages 100\n"
            )
        conf.write_text(config_text)
        super().__init__([find_tool("mosquitto", ["/usr/sbin/mosquitto"]), "-c", conf],
                         log_path=self.workdir / "mosquitto.log")

    def start(self):
        super().start()
        wait_port(self.port, proc=self.proc)
        return self


class Anvil(Service):
    """Anvil on a free port; with `state_file`, the chain survives a restart."""

    def __init__(self, workdir, port=None, state_file=None, block_time=None, chain_id=31337):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        argv = [find_tool("anvil", [ROOT / "node/node_modules/.bin/anvil"]),
                "--host", "127.0.0.1", "--port", self.port, "--chain-id", chain_id,
                "--accounts", "10", "--silent"]
        if state_file:
            argv += ["--state", state_file]
        if block_time:
            argv += ["--block-time", block_time]
        super().__init__(argv, log_path=self.workdir / "anvil.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        super().start()
        wait_port(self.port, timeout=30, proc=self.proc)
        return self


# Anvil's well-known development accounts (mnemonic "test test … junk"): public test keys.
ANVIL_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
]


def micropython():
    """Path of the venv's MicroPython unix port."""
    return find_tool("micropython", [ROOT / ".venv/bin/micropython"])


class StopList:
    """What a bench or the demo started, stopped in reverse order; one failing stop does
    not keep the others running, and its error is returned instead of raised."""

    def __init__(self):
        self._items = []

    def add(self, name, stop):
        self._items.append((name, stop))

    def stop_all(self):
        errors = []
        while self._items:
            name, stop = self._items.pop()
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - stop everything else regardless
                errors.append(f"{name}: {e!r}")
        return errors


def _stop_all():
    for svc in list(_RUNNING):
        try:
            svc.stop(timeout=2)
        except Exception:  # noqa: BLE001, S110 - at exit every service still gets its stop
            pass


atexit.register(_stop_all)
