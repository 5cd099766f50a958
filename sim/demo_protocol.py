"""The protocol walk-through: a key born on MicroPython signs a reading that CPython verifies.

This is the smallest honest demonstration of the trust chain the whole system rests
on, and `make demo` shows it before the community run: the device-side code
(protocol/p256.py, protocol/ocmf.py) runs under the real MicroPython binary with an
ESP32-sized heap, and the gateway side checks the record with `cryptography`.
"""
import json
import subprocess
import sys
import time

from sim.services import ROOT, micropython

DEVICE_SCRIPT = r"""
import json, time
from protocol import p256, ocmf
secret = p256.generate_secret()
pub = p256.public_key(secret)
t0 = time.ticks_ms()
rec = ocmf.build(secret, SEQ, IMPORT_WH, EXPORT_WH, EPOCH, gi="EGS-ESP32", gs="demo-device",
                 gv="0.1.0", mv="Eastron", mm="SDM630", ms="SDM630-0001")
ms = time.ticks_diff(time.ticks_ms(), t0)
print(json.dumps({"pubkey": "".join("%02x" % b for b in pub), "record": rec, "sign_ms": ms}))
"""


def run(out=print):
    from protocol import ocmf

    import_wh, export_wh = 98765432, 1234567
    epoch = int(time.time())
    script = (DEVICE_SCRIPT.replace("SEQ", "1").replace("IMPORT_WH", str(import_wh))
              .replace("EXPORT_WH", str(export_wh)).replace("EPOCH", str(epoch)))
    out("1. On MicroPython (-X heapsize=100K): generate a device key, sign an OCMF reading")
    proc = subprocess.run([micropython(), "-X", "heapsize=100K", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"MICROPYPATH": f".frozen:{ROOT}", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(f"MicroPython failed: {proc.stderr or proc.stdout}")
    device = json.loads(proc.stdout.strip().splitlines()[-1])
    out(f"   public key  {device['pubkey'][:24]}… (the secret never left the process)")
    out(f"   signed in   {device['sign_ms']} ms")
    out(f"   record      {device['record'][:96]}…")
    out("2. On CPython with `cryptography`: verify it against the public key")
    rec = ocmf.verify(device["record"], device["pubkey"])
    out(f"   verified: sequence {rec.sequence}, import {rec.import_wh} Wh, export {rec.export_wh} Wh")
    if (rec.import_wh, rec.export_wh) != (import_wh, export_wh):
        raise RuntimeError("the verified energy differs from what the device signed")
    out("3. Change one character of the payload and verify again")
    tampered = device["record"].replace("98765.432", "98765.433", 1)
    try:
        ocmf.verify(tampered, device["pubkey"])
    except ocmf.OcmfError as e:
        out(f"   rejected as expected: {type(e).__name__}: {e}")
    else:
        raise RuntimeError("a tampered record verified")
    return rec


if __name__ == "__main__":
    try:
        run()
    except Exception as e:  # noqa: BLE001 - any failure of the walk-through is one line on stderr
        print(f"demo failed: {e}", file=sys.stderr)
        sys.exit(1)
