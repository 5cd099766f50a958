"""The signed release bundle (tools/release.py, protocol/bundle.py): reproducible, signed,
and refused whole when anything in it changed, under CPython (the installer) and under
MicroPython (the device), with the same code."""
import hashlib
import io
import json
import shutil
import subprocess
import tarfile

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import bundle, p256
from sim.services import micropython
from tools import fidelity, release

ROOT = fidelity.ROOT


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "release.pem"
    pub = release.generate_key(path)
    return release.load_secret(path), pub, path


@pytest.fixture(scope="module")
def built(keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    path, manifest = release.build(keys[0], out)
    return path, manifest


def members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def repack(entries):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            tar.addfile(release._tarinfo(name, len(data)), io.BytesIO(data))
    return out.getvalue()


def test_bundle_holds_every_device_module_with_its_hash(built, keys):
    path, manifest = built
    assert path.name == f"firmware-{release.firmware_version()}.tar"
    entries = members(path.read_bytes())
    assert [n for n, _ in entries[:2]] == ["manifest.json", "manifest.sig"]
    expected = sorted(m[:-3] + ".mpy" for m in fidelity.device_modules("esp32"))
    assert [e[0] for e in manifest["files"]] == expected
    assert [n for n, _ in entries[2:]] == ["app/" + n for n in expected]
    for (name, size, digest), (_, data) in zip(manifest["files"], entries[2:], strict=True):
        assert size == len(data) and digest == hashlib.sha256(data).hexdigest(), name
        assert data[:2] == b"M\x06"
    assert manifest["version"] == release.firmware_version()
    assert manifest["march"] == "xtensawin" and manifest["port"] == "esp32"
    assert not any("hal/unix" in e[0] for e in manifest["files"])
    # the signature is ordinary ECDSA P-256 over the manifest bytes: cryptography agrees
    raw, sig = entries[0][1], entries[1][1]
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), keys[1])
    key.verify(sig, raw, ec.ECDSA(hashes.SHA256()))
    assert release.verify_file(path, keys[1]) == manifest


def test_same_sources_give_byte_identical_bundles(built, keys, tmp_path):
    """Also from a copy of the sources at another path, at another time."""
    copy = tmp_path / "elsewhere"
    for rel in fidelity.device_modules("esp32") + fidelity.unix_hal_modules():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, copy / rel)
    (copy / "firmware/hal/esp32.py").parent.mkdir(parents=True, exist_ok=True)
    again, _ = release.build(keys[0], tmp_path / "out", root=copy)
    assert again.read_bytes() == built[0].read_bytes()


def test_changed_source_changes_the_bundle(built, keys, tmp_path):
    copy = tmp_path / "src"
    for rel in fidelity.device_modules("esp32"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, copy / rel)
    version = copy / "firmware/version.py"
    version.write_text(version.read_text().replace('FW_VERSION = "', 'FW_VERSION = "9', 1))
    path, manifest = release.build(keys[0], tmp_path / "out", root=copy)
    assert manifest["version"].startswith("9") and path.name.startswith("firmware-9")
    assert path.read_bytes() != built[0].read_bytes()


def tampered(data):
    """(label, bundle bytes) for every way a bundle can be wrong."""
    entries = members(data)
    raw, sig = entries[0][1], entries[1][1]
    out = []
    for i in (2, len(entries) // 2, len(entries) - 1):           # one byte of a file
        e = list(entries)
        b = bytearray(e[i][1])
        b[len(b) // 2] ^= 0x01
        e[i] = (e[i][0], bytes(b))
        out.append((f"byte in {e[i][0]}", repack(e)))
    m = bytearray(raw)
    m[m.index(b'"version":"') + 11] ^= 0x01                      # one byte of the manifest
    out.append(("manifest byte", repack([(entries[0][0], bytes(m))] + entries[1:])))
    s = bytearray(sig)
    s[-3] ^= 0x01
    out.append(("signature byte", repack([entries[0], (entries[1][0], bytes(s))] + entries[2:])))
    out.append(("unsigned", repack([entries[0]] + entries[2:])))
    out.append(("file missing", repack(entries[:-1])))
    out.append(("extra file", repack(entries + [("app/firmware/evil.mpy", b"M\x06")])))
    out.append(("reordered", repack(entries[:2] + entries[3:4] + entries[2:3] + entries[4:])))
    out.append(("truncated", data[:len(data) // 2]))
    out.append(("truncated header", data[:1024 + 100]))
    out.append(("empty", b""))
    out.append(("garbage", b"\x00\x01garbage" * 200))
    # hostile headers ahead of the signature check: checksums right, fields not UTF-8
    out.append(("name not UTF-8", _header(b"\xff\xfemanifest.json") + data[512:]))
    out.append(("size not UTF-8", _header(b"manifest.json", size=b"\xc3\x28") + data[512:]))
    out.append(("size not octal", _header(b"manifest.json", size=b"0000000009x") + data[512:]))
    out.append(("prefix not UTF-8", _header(b"manifest.json", prefix=b"\x80") + data[512:]))
    out.append(("directory entry", _header(b"manifest.json", kind=b"5") + data[512:]))
    return out


def _header(name, size=b"00000000010", prefix=b"", kind=b"0"):
    """A ustar header block with a correct checksum around arbitrary field bytes."""
    h = bytearray(512)
    h[:len(name)] = name
    h[124:124 + len(size)] = size
    h[156:157] = kind
    h[257:263] = b"ustar\x00"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def test_every_tampered_bundle_is_refused(built, keys):
    data = built[0].read_bytes()
    for label, bad in tampered(data):
        with pytest.raises(bundle.BundleError):
            bundle.verify(io.BytesIO(bad), keys[1])
            pytest.fail(f"accepted: {label}")
    other = p256.public_key(p256.generate_secret())
    with pytest.raises(bundle.BundleError, match="signature"):
        bundle.verify(io.BytesIO(data), other)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_bundles_only_raise_bundle_error(built, keys, data):
    """Bytes changed anywhere in the first blocks (headers, manifest, signature) or the
    archive cut anywhere: refused with BundleError, never another exception."""
    raw = bytearray(built[0].read_bytes()[:4096])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with pytest.raises(bundle.BundleError):
        bundle.verify(io.BytesIO(bytes(raw[:cut])), keys[1])


def test_signed_but_hostile_manifest_is_refused(keys):
    """Even the release key cannot make the device write outside its app directory."""
    for name in ("../boot.py", "/main.py", "firmware/../../x.mpy", "a//b.mpy", "A.mpy"):
        data = repack([])
        manifest = {"files": [[name, 2, hashlib.sha256(b"hi").hexdigest()]], "format": 1,
                    "march": "xtensawin", "mpy": "6.3", "port": "esp32", "version": "1.0.0"}
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        data = repack([("manifest.json", raw), ("manifest.sig", p256.sign(keys[0], raw)),
                       ("app/" + name, b"hi")])
        with pytest.raises(bundle.BundleError, match="name"):
            bundle.verify(io.BytesIO(data), keys[1])


def test_install_unpacks_the_checked_files(built, keys, tmp_path):
    with open(built[0], "rb") as f:
        manifest = bundle.install(f, keys[1], str(tmp_path))
    for name, size, digest in manifest["files"]:
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    assert (tmp_path / "manifest.json").read_bytes() == members(built[0].read_bytes())[0][1]


MP_VERIFY = r"""
import sys
from protocol import bundle
pub = bytes.fromhex(sys.argv[1])
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as f:
            m = bundle.verify(f, pub)
        print("OK", path, m["version"])
    except bundle.BundleError as e:
        print("REFUSED", path, e)
"""


def test_device_code_refuses_the_same_bundles_under_micropython(built, keys, tmp_path):
    data = built[0].read_bytes()
    paths = [str(built[0])]
    for i, (_, bad) in enumerate(tampered(data)):
        p = tmp_path / f"bad{i}.tar"
        p.write_bytes(bad)
        paths.append(str(p))
    script = tmp_path / "verify.py"
    script.write_text(MP_VERIFY)
    proc = subprocess.run([micropython(), "-X", "heapsize=100K", str(script), keys[1].hex()]
                          + paths, cwd=ROOT, env={"MICROPYPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(paths), proc.stdout + proc.stderr
    assert lines[0].startswith("OK ") and lines[0].endswith(built[1]["version"])
    assert all(line.startswith("REFUSED ") for line in lines[1:]), proc.stdout


def test_release_cli(keys, tmp_path, capsys):
    key = tmp_path / "k.pem"
    assert release.main(["keygen", "--key", str(key)]) == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    assert release.main(["keygen", "--key", str(key)]) == 1          # never overwrites
    assert release.main(["build", "--key", str(key), "--out", str(tmp_path / "d")]) == 0
    path = next((tmp_path / "d").glob("firmware-*.tar"))
    assert release.main(["verify", str(path), "--pubkey", str(key) + ".pub"]) == 0
    assert release.main(["verify", str(path), "--pubkey", keys[1].hex()]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "signature" in err
    assert release.main(["build", "--key", str(tmp_path / "none.pem")]) == 1


def _signed_manifest_bundle(keys, manifest_raw, files):
    return repack([("manifest.json", manifest_raw), ("manifest.sig", p256.sign(keys[0], manifest_raw))]
                  + [("app/" + n, d) for n, d in files])


def _hostile_bundles(keys):
    """Signed by the release key, yet shaped to crash an unpacker: a manifest nested 5,000
    levels deep, and one listing both a file `a` and a file `a/b` under it."""
    sha = hashlib.sha256(b"hi").hexdigest()
    deep = (b'{"files":[["a",2,"' + sha.encode() + b'"]],"format":1,"port":"esp32",'
            b'"version":"1.0.0","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    both = json.dumps({"files": [["a", 2, sha], ["a/b", 2, sha]], "format": 1, "march": "xtensawin",
                       "mpy": "6.3", "port": "esp32", "version": "1.0.0"},
                      sort_keys=True, separators=(",", ":")).encode()
    return {"deep": (_signed_manifest_bundle(keys, deep, [("a", b"hi")]), "nested too deep"),
            "file_and_dir": (_signed_manifest_bundle(keys, both, [("a", b"hi"), ("a/b", b"hi")]),
                             "also a directory")}


@pytest.mark.parametrize("kind", ["deep", "file_and_dir"])
def test_signed_manifest_that_would_crash_the_unpacker_is_refused(keys, tmp_path, kind):
    data, reason = _hostile_bundles(keys)[kind]
    dest = tmp_path / "app"
    dest.mkdir()
    with pytest.raises(bundle.BundleError, match=reason):
        bundle.install(io.BytesIO(data), keys[1], str(dest))
    assert list(dest.iterdir()) == []                  # refused before anything is written
    from gateway.cliutil import UserError
    from gateway.devices import installer
    path = tmp_path / "hostile.tar"
    path.write_bytes(data)
    with pytest.raises(UserError, match=reason):
        installer.check_bundle(path, keys[1])


def test_device_code_refuses_hostile_manifests_under_micropython(keys, tmp_path):
    paths = []
    for kind, (data, _) in _hostile_bundles(keys).items():
        p = tmp_path / f"{kind}.tar"
        p.write_bytes(data)
        paths.append(str(p))
    script = tmp_path / "verify.py"
    script.write_text(MP_VERIFY)
    proc = subprocess.run([micropython(), "-X", "heapsize=100K", str(script), keys[1].hex()] + paths,
                          cwd=ROOT, env={"MICROPYPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and "nested too deep" in lines[0] and "also a directory" in lines[1], \
        proc.stdout + proc.stderr
