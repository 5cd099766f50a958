"""Installing a signed firmware release on a new (or repaired) ESP32: what
`egs-gw device flash` (gateway/devices/commands.py) does, step by step.

    egs-gw device flash --port /dev/ttyUSB0 --bundle dist/firmware-0.1.0.tar
                        [--release-key HEX|FILE] [--micropython ESP32_GENERIC.bin] [--erase]
                        [--dry-run] [--id DEVICE ... options of `device provision`]

Steps (docs/installer.md):
1. check the bundle: manifest signature against the release public key, every file's
   size and SHA-256 (protocol/bundle.py, the code the device runs for updates too). An
   unsigned or tampered bundle is refused here, before the device is touched;
2. with --micropython: `esptool write-flash 0x1000 IMAGE` (after `erase-flash` with
   --erase), the MicroPython firmware image for the board;
3. lay out the device file system (`stage_tree`): /main.py (starts the boot selector),
   /boot_select.mpy, /release.pub (the key future updates must be signed with),
   /boot.json (slot a active) and the application in /app_a; an older installation's
   slots are removed first, the device key, configuration and flash log are kept;
4. copy it with mpremote and reset the board;
5. with --id (and any further `device provision` options), hand over to
   `egs-gw device provision --port PORT ...`: the device makes its key, gets its
   configuration, and is registered.
Progress is shown step by step; --dry-run prints the commands instead of running them.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from firmware import boot_select
from gateway.cliutil import UserError
from protocol import bundle, p256

MICROPYTHON_OFFSET = "0x1000"       # ESP32 (classic) MicroPython images start here

MAIN_PY = """\
# Written by `egs-gw device flash`: start the application slot chosen by boot_select.
import boot_select
try:
    boot_select.main()
finally:
    import machine
    machine.reset()
"""

CLEANUP = """\
import os
def rm(p):
    try:
        for n in os.listdir(p):
            rm(p + '/' + n)
        os.rmdir(p)
    except OSError:
        try:
            os.remove(p)
        except OSError:
            pass
for p in ('/app_a', '/app_b', '/boot.json', '/boot.tmp', '/ota.tar', '/boot_select.mpy'):
    rm(p)
"""


def load_release_key(value):
    """The 65-byte release public key from hex, or from a file holding hex (KEY.pem.pub).

    Here rather than in tools/ (which uses it): `tools` is the build machine's package
    and is not installed with egs-gw, which must run from anywhere."""
    text = str(value).strip()
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]{130}", text):
        try:
            text = Path(text).read_text().strip()
        except (OSError, ValueError) as e:
            raise UserError(f"release public key: not hex and not a readable file ({e})") \
                from None
    text = text.removeprefix("0x")
    if not re.fullmatch(r"[0-9a-fA-F]{130}", text):
        raise UserError("release public key is not 130 hex digits (65 bytes, 04...)")
    pub = bytes.fromhex(text)
    if p256.decode_public_key(pub) is None:
        raise UserError("release public key is not a P-256 point (65 bytes, 04...)")
    return pub


def check_bundle(path, pubkey):
    """The manifest of a good bundle; UserError saying why a bundle is refused."""
    try:
        with open(path, "rb") as f:
            return bundle.verify(f, pubkey)
    except bundle.BundleError as e:
        raise UserError(f"bundle {path} refused: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read bundle {path}: {e}") from None


def stage_tree(bundle_path, pubkey, dest, slot="a"):
    """Write the device's file system layout for this bundle under `dest` (a directory):
    the checked application in app_<slot>, boot_select.mpy, main.py, release.pub and
    boot.json. Returns the manifest. The same tree is what the unix-port tests boot."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    app = dest / f"app_{slot}"
    if app.exists():
        shutil.rmtree(app)
    app.mkdir()
    try:
        with open(bundle_path, "rb") as f:
            manifest = bundle.install(f, pubkey, str(app))
    except bundle.BundleError as e:
        shutil.rmtree(app, ignore_errors=True)
        raise UserError(f"bundle {bundle_path} refused: {e}") from None
    shutil.copy(app / "firmware" / "boot_select.mpy", dest / "boot_select.mpy")
    (dest / "main.py").write_text(MAIN_PY)
    (dest / "release.pub").write_text(pubkey.hex() + "\n")
    state = boot_select.default_state()
    state["active"] = slot
    (dest / "boot.json").write_text(json.dumps(state))
    return manifest


def plan(port, tree, image=None, erase=False, baud=460800):
    """The commands that install `tree` on the board at `port`, as argv lists."""
    bindir = Path(sys.executable).parent
    esptool = str(bindir / "esptool")
    mpremote = str(bindir / "mpremote")
    steps = []
    if erase:
        steps.append(("erase flash", [esptool, "--chip", "esp32", "--port", port, "erase-flash"]))
    if image:
        steps.append(("write MicroPython", [esptool, "--chip", "esp32", "--port", port, "--baud",
                                            str(baud), "write-flash", "-z", MICROPYTHON_OFFSET,
                                            str(image)]))
    copy = [mpremote, "connect", port, "exec", CLEANUP]
    for name in ("app_a", "boot_select.mpy", "release.pub", "boot.json", "main.py"):
        src = Path(tree) / name
        copy += ["+", "fs", "cp"] + (["-r"] if src.is_dir() else []) + [str(src), ":"]
    steps.append(("install application", copy))
    steps.append(("reset", [mpremote, "connect", port, "reset"]))
    return steps


def run_step(argv):
    """Exit status of a step; its output goes to stderr, so stdout stays for --json."""
    try:
        sink = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        sink = None                     # stderr is not a file (click's test runner)
    if sink is not None:
        return subprocess.run(argv, stdout=sink, check=False).returncode
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    sys.stderr.write(proc.stdout.decode(errors="replace"))
    return proc.returncode

