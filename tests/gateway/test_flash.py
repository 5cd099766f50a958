"""`egs-gw device flash` without a board: every refusal happens before the device is
touched, and the file system laid out for the board is the checked release."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.devices import installer
from gateway.devices.commands import device_flash
from protocol import p256
from tools import release


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    pub = release.generate_key(d / "release.pem")
    path, manifest = release.build(release.load_secret(d / "release.pem"), d / "dist")
    return path, pub, d / "release.pem.pub", manifest


@pytest.fixture(scope="module")
def keys_dir(signed):
    _path, pub, pubfile, _ = signed
    return release.load_secret(str(pubfile)[:-4]), pub


def run(*args):
    result = CliRunner().invoke(device_flash, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _corrupt(path, tmp_path):
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = tar.getmember("app/firmware/app.mpy")
        offset = member.offset_data
    data[offset + 100] ^= 0x20
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    return bad


def test_refusals_happen_before_the_board_is_touched(signed, tmp_path):
    path, pub, _pubfile, _ = signed
    # /dev/ttyNOPE does not exist: had any step reached the board, it would say so
    port = "/dev/ttyNOPE"
    code, _, err = run("--port", port, "--bundle", str(_corrupt(path, tmp_path)),
                       "--release-key", pub.hex())
    assert code == 1 and "refused" in err and "sha256 of firmware/app.mpy" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    other = p256.public_key(p256.generate_secret()).hex()
    code, _, err = run("--port", port, "--bundle", str(path), "--release-key", other)
    assert code == 1 and "signature" in err
    unsigned = tmp_path / "unsigned.tar"
    with tarfile.open(path) as src, tarfile.open(unsigned, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            if m.name != "manifest.sig":
                dst.addfile(m, src.extractfile(m))
    code, _, err = run("--port", port, "--bundle", str(unsigned), "--release-key", pub.hex())
    assert code == 1 and "not signed" in err
    code, _, err = run("--port", port, "--bundle", str(tmp_path / "missing.tar"),
                       "--release-key", pub.hex())
    assert code == 1 and "cannot read bundle" in err
    code, _, err = run("--port", port, "--bundle", str(path))
    assert code == 1 and "no release key" in err
    code, _, err = run("--port", port, "--bundle", str(path), "--release-key", "04abcd")
    assert code == 1 and "release public key" in err
    code, _, err = run("--port", port, "--bundle", str(path), "--release-key", pub.hex(),
                       "--erase")
    assert code == 1 and "--micropython" in err


def test_dry_run_plans_esptool_and_mpremote(signed, tmp_path):
    path, _pub, pubfile, manifest = signed
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(b"\xe9" + bytes(100))
    code, out, err = run("--port", "/dev/ttyUSB7", "--bundle", str(path), "--release-key",
                         str(pubfile), "--micropython", str(image), "--erase", "--dry-run",
                         "--json")
    assert code == 0, err
    assert "signature and hashes good" in err
    plan = json.loads(out)
    assert plan["version"] == manifest["version"]
    steps = [s["step"] for s in plan["steps"]]
    assert steps == ["erase flash", "write MicroPython", "install application", "reset"]
    write = plan["steps"][1]["argv"]
    assert write[-3:] == ["-z", "0x1000", str(image)] and "/dev/ttyUSB7" in write
    install = plan["steps"][2]["argv"]
    assert install[1:4] == ["connect", "/dev/ttyUSB7", "exec"]
    targets = [install[i + 1] for i, a in enumerate(install) if a == "cp"]
    assert "-r" in install and len(targets) == 5


def test_stage_tree_is_a_bootable_checked_layout(signed, tmp_path):
    path, pub, _, manifest = signed
    got = installer.stage_tree(path, pub, tmp_path / "dev")
    assert got == manifest
    dev = tmp_path / "dev"
    assert json.loads((dev / "boot.json").read_text())["active"] == "a"
    assert bytes.fromhex((dev / "release.pub").read_text().strip()) == pub
    assert (dev / "boot_select.mpy").read_bytes() == \
        (dev / "app_a/firmware/boot_select.mpy").read_bytes()
    assert "boot_select.main()" in (dev / "main.py").read_text()
    for name, size, digest in manifest["files"]:
        assert hashlib.sha256((dev / "app_a" / name).read_bytes()).hexdigest() == digest


def test_egs_gw_flash_runs_outside_the_source_tree(signed, tmp_path):
    """The installed `egs-gw` (not pytest's sys.path) checks the bundle and plans: the
    release key loader once came from the build tools, which egs-gw does not install."""
    path, _pub, pubfile, manifest = signed
    egs_gw = Path(sys.executable).parent / "egs-gw"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGS_", "PYTHON"))}
    proc = subprocess.run([str(egs_gw), "device", "flash", "--port", "/dev/ttyNOPE",
                           "--bundle", str(path), "--release-key", str(pubfile), "--dry-run",
                           "--json", "--db", str(tmp_path / "gw.db")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == manifest["version"]
    assert "Traceback" not in proc.stderr


def test_bundle_for_another_port_is_refused(keys_dir, tmp_path):
    secret, pub = keys_dir
    unix_bundle, manifest = release.build(secret, tmp_path / "dist", port="unix")
    assert manifest["port"] == "unix"
    code, out, err = run("--port", "/dev/ttyNOPE", "--bundle", str(unix_bundle),
                         "--release-key", pub.hex(), "--dry-run", "--json")
    assert code == 1 and "'unix' port, not esp32" in err and out == ""


def test_stray_options_without_id_are_refused(signed):
    path, pub, _, _ = signed
    code, out, err = run("--port", "/dev/ttyNOPE", "--bundle", str(path), "--release-key",
                         pub.hex(), "--eras", "--dry-run", "--json")
    assert code == 1 and "unknown options --eras" in err and out == ""


def test_a_failing_step_stops_with_one_line_and_keeps_stdout_clean(signed):
    """No board at the port: mpremote fails, the installer says which step, exit 1."""
    path, pub, _, _ = signed
    code, out, err = run("--port", "/dev/ttyNOPE", "--bundle", str(path), "--release-key",
                         pub.hex(), "--json")
    assert code == 1
    assert out == ""                                  # tool output went to stderr
    assert "[1/3] bundle" in err and "[2/3] install application ..." in err
    assert "install application failed (exit 1)" in err
    assert "[3/3]" not in err and "installed firmware" not in err
