"""Helpers for the Modbus tests: the real MicroPython binary as master, and an oracle.

MpProbe runs tests/mp/modbus_probe.py under `micropython -X heapsize=100K` and talks to it one
JSON line at a time; the process is always stopped, even when a test fails.
"""
import json
import os
import selectors
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from sim.services import micropython

ROOT = Path(__file__).resolve().parents[2]


def f32_words_to_wh(words, mul=1000, div=1):
    """Independent oracle: float32 register words -> round(value * mul / div), half to even."""
    value = struct.unpack(">f", struct.pack(">HH", *words))[0]
    return round(Fraction(value) * mul / div)


def int_words(words):
    raw = 0
    for w in words:
        raw = (raw << 16) | w
    return raw


class MpProbe:
    def __init__(self, link_args, heap="100K", timeout_ms=300, retries=1):
        env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
        argv = [micropython(), "-X", f"heapsize={heap}", "tests/mp/modbus_probe.py", *link_args,
                "--timeout-ms", str(timeout_ms), "--retries", str(retries)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def ask(self, timeout=15, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        if not self._sel.select(timeout):
            raise TimeoutError(f"micropython gave no answer to {cmd}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"micropython exited {self.proc.returncode}: "
                               f"{self.proc.stderr.read()}")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._sel.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def mp_probe():
    """Factory: mp_probe(["--tcp", "127.0.0.1:1502"]) -> a running MpProbe, closed after."""
    probes = []

    def start(link_args, **kw):
        probe = MpProbe(link_args, **kw)
        probes.append(probe)
        return probe

    yield start
    for probe in probes:
        probe.close()
