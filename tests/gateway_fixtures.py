"""Helpers for the gateway tests: devices with their own keys signing OCMF readings.

Records are built with protocol.ocmf.build_payload (the device's exact layout)
and signed with `cryptography` (fast; the pure-Python signer is tested elsewhere).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import db, store
from protocol import ocmf

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = "testcomm"
T0 = 1795000500 - 1795000500 % 900   # a quarter-hour boundary in Nov 2026


class Signer:
    def __init__(self, device_id="dev1", serial="SN-1"):
        self.id = device_id
        self.serial = serial
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pub = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def payload(self, seq, imp, exp, t=T0, status="S", serial=None):
        return ocmf.build_payload(seq, imp, exp, t, gi="EGS-TEST", gs=self.id, gv="0.1.0",
                                  mv="Eastron", mm="SDM630", ms=serial or self.serial,
                                  time_status=status)

    def sign(self, payload, key=None):
        der = (key or self.key).sign(payload, ec.ECDSA(hashes.SHA256()))
        return ("OCMF|" + payload.decode() + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"'
                + der.hex().upper() + '"}')

    def record(self, seq, imp, exp, t=T0, status="S", serial=None, key=None):
        return self.sign(self.payload(seq, imp, exp, t, status, serial), key)

    def register(self, conn, account=None, first_seq=None):
        return store.add_device(conn, self.id, self.pub, self.serial, account=account,
                                first_seq=first_seq)


def topic(device, kind="ocmf", community=COMMUNITY):
    return f"egs/v1/{community}/{device}/{kind}"


@pytest.fixture(name="gwdb")
def gwdb_fixture(tmp_path):
    path = tmp_path / "gw.sqlite"
    conn = db.connect(path)
    store.init(conn)
    yield conn
    conn.close()


def egs_gw(*args, env=None, input=None, timeout=60):
    """Run the real `egs-gw` console script; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("EGS_GW_CONFIG", None)
    e.pop("EGS_GW_DB", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=e, input=input, timeout=timeout,
                          check=False)


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def jloads(text):
    return json.loads(text)
