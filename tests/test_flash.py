"""`egs-gw device flash` without a board: every refusal happens before the device is
touched, and the file system laid out for the board is the checked release."""
import hashlib
import io
import json
import tarfile

import pytest
from click.testing import CliRunner

from gateway import flash
from protocol import p256
from tools import release


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    pub = release.generate_key(d / "release.pem")
    path, manifest = release.build(release.load_secret(d / "release.pem"), d / "dist")
    return path, pub, d / "release.pem.pub", manifest


def run(*args):
    result = CliRunner().invoke(flash.flash_cmd, list(args), catch_exceptions=False)
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
    got = flash.stage_tree(path, pub, tmp_path / "dev")
    assert got == manifest
    dev = tmp_path / "dev"
    assert json.loads((dev / "boot.json").read_text())["active"] == "a"
    assert bytes.fromhex((dev / "release.pub").read_text().strip()) == pub
    assert (dev / "boot_select.mpy").read_bytes() == \
        (dev / "app_a/firmware/boot_select.mpy").read_bytes()
    assert "boot_select.main()" in (dev / "main.py").read_text()
    for name, size, digest in manifest["files"]:
        assert hashlib.sha256((dev / "app_a" / name).read_bytes()).hexdigest() == digest
