"""Build the signed firmware release bundle: dist/firmware-<version>.tar.

    .venv/bin/python -m tools.release build [--key PEM] [--out DIR] [--port esp32|unix]
    .venv/bin/python -m tools.release keygen --key PEM     # a new release key (0600) + .pub
    .venv/bin/python -m tools.release verify BUNDLE --pubkey HEX|FILE

The bundle (format in protocol/bundle.py) holds the .mpy of every device module (the one
list in firmware/manifest.py), a manifest with each file's name, size and SHA-256 and the
firmware version (FW_VERSION in firmware/version.py, so the bundle and the code it carries
cannot disagree), signed by the release key. Reproducible: the same sources give a
byte-identical bundle (`pack`). The release key is a PEM file given by --key or
$EGS_RELEASE_KEY; production and development keys: docs/installer.md, section 1.
"""
import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

from protocol import bundle as bundle_mod
from protocol import p256
from tools import fidelity

ROOT = fidelity.ROOT
DEV_KEY = ROOT / ".state" / "release-dev.pem"
MPY_VERSION = "6.3"


class ReleaseError(ValueError):
    pass


# ------------------------------------------------------------------------- keys

def generate_key(path):
    """Write a new P-256 release key (PKCS#8 PEM, mode 0600) and <path>.pub (hex SEC1)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    if path.exists():
        raise ReleaseError(f"{path} exists; refusing to overwrite a release key")
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = p256.generate_secret()
    key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = p256.public_key(secret)
    Path(str(path) + ".pub").write_text(pub.hex() + "\n")
    return pub


def load_secret(path):
    """The 32-byte secret of a PEM (PKCS#8 or SEC1) P-256 private key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ReleaseError(f"cannot read release key {path}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ReleaseError(f"{path} is not a P-256 private key")
    return key.private_numbers().private_value.to_bytes(32, "big")


def load_pubkey(text_or_path):
    """A 65-byte release public key from hex, or from a file holding hex (e.g. KEY.pem.pub).
    The installer's parser (gateway/devices/installer.py), so both read keys the same way."""
    from gateway.cliutil import UserError
    from gateway.devices.installer import load_release_key

    try:
        return load_release_key(text_or_path)
    except UserError as e:
        raise ReleaseError(str(e)) from None


# ------------------------------------------------------------------------ bundle

VERSION_FILE = "firmware/version.py"


def firmware_version(root=ROOT):
    """FW_VERSION of the sources under `root`, read from the text of firmware/version.py
    (the sources may be another tree than the one this tool runs from)."""
    m = re.search(r'^FW_VERSION\s*=\s*"([^"]+)"', (Path(root) / VERSION_FILE).read_text(),
                  re.MULTILINE)
    if not m or bundle_mod.parse_version(m.group(1)) is None:
        raise ReleaseError(f"{VERSION_FILE} has no FW_VERSION = \"X.Y.Z\"")
    return m.group(1)


def _tarinfo(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack(files, secret, version, port="esp32", march=fidelity.MARCH):
    """Bundle bytes from {name: bytes} (names as on the device, e.g. firmware/app.mpy).

    Byte-identical for the same files: the tar has fixed order, mtime 0, uid/gid 0, no user
    names, ustar format; the signature is deterministic (RFC 6979 in protocol/p256.py, which
    is also what the device verifies with; `cryptography` would draw a random nonce). The
    files themselves are reproducible too: mpy-cross output depends only on the source and
    the embedded name (the repository path).
    """
    entries = [[name, len(data), hashlib.sha256(data).hexdigest()]
               for name, data in sorted(files.items())]
    manifest = {"files": entries, "format": bundle_mod.FORMAT, "march": march or "none",
                "mpy": MPY_VERSION, "port": port, "version": version}
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    bundle_mod.parse_manifest(raw)           # what the device will accept
    sig = p256.sign(secret, raw)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("manifest.json", raw), ("manifest.sig", sig)] + \
                [("app/" + n, files[n]) for n, _, _ in entries]:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return out.getvalue()


def compile_app(root=ROOT, port="esp32", march=fidelity.MARCH):
    """{device name: .mpy bytes} for every device module of `port` under `root`."""
    root = Path(root).resolve()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel in fidelity.device_modules(port, root):
            target = Path(tmp) / (rel[:-3] + ".mpy")
            fidelity.compile_mpy(rel, target, march=march, root=root)
            out[rel[:-3] + ".mpy"] = target.read_bytes()
    return out


def build(secret, out_dir, root=ROOT, port="esp32", march=fidelity.MARCH, budget=True):
    """Compile, sign and write dist/firmware-<version>[-<port>].tar; returns (path, manifest)."""
    version = firmware_version(root)
    files = compile_app(root, port, march)
    total = sum(len(d) for d in files.values())
    if budget and total > fidelity.APP_BUDGET:
        raise ReleaseError(f"application is {total} bytes of .mpy, over the "
                           f"{fidelity.APP_BUDGET} budget")
    data = pack(files, secret, version, port, march)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"firmware-{version}.tar" if port == "esp32" else f"firmware-{version}-{port}.tar"
    path = out_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path, json.loads(_manifest_bytes(data))


def _manifest_bytes(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return member.read()


def verify_file(path, pubkey):
    """The manifest of a bundle file, or ReleaseError saying why it is refused (the
    installer's check, gateway/devices/installer.py)."""
    from gateway.cliutil import UserError
    from gateway.devices.installer import check_bundle

    try:
        return check_bundle(path, pubkey)
    except UserError as e:
        raise ReleaseError(str(e)) from None


# ------------------------------------------------------------------ command line

def _key_path(arg):
    return Path(arg or os.environ.get("EGS_RELEASE_KEY") or DEV_KEY)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.release", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile, sign and write the bundle")
    b.add_argument("--key", help="release key PEM (default $EGS_RELEASE_KEY, else a dev key "
                                 "in .state/release-dev.pem, created when missing)")
    b.add_argument("--out", default=str(ROOT / "dist"))
    b.add_argument("--port", choices=("esp32", "unix"), default="esp32")
    b.add_argument("--march", default=fidelity.MARCH,
                   help="mpy-cross architecture ('none' for bytecode only)")
    k = sub.add_parser("keygen", help="create a release key")
    k.add_argument("--key", required=True)
    v = sub.add_parser("verify", help="check a bundle's signature and hashes")
    v.add_argument("bundle")
    v.add_argument("--pubkey", required=True, help="hex SEC1 key or a file holding it")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "keygen":
            pub = generate_key(args.key)
            print(f"release key written to {args.key}; public key ({args.key}.pub):\n{pub.hex()}")
        elif args.cmd == "build":
            key = _key_path(args.key)
            if not key.exists():
                if args.key or os.environ.get("EGS_RELEASE_KEY"):
                    raise ReleaseError(f"release key {key} not found")
                generate_key(key)
                print(f"note: created a DEVELOPMENT release key {key} (not for production)",
                      file=sys.stderr)
            march = None if args.march == "none" else args.march
            path, manifest = build(load_secret(key), args.out, port=args.port, march=march)
            total = sum(e[1] for e in manifest["files"])
            pub = p256.public_key(load_secret(key)).hex()
            print(f"{path}: version {manifest['version']}, {len(manifest['files'])} files, "
                  f"{total} bytes of .mpy, sha256 "
                  f"{hashlib.sha256(path.read_bytes()).hexdigest()}\nrelease public key {pub}")
        else:
            m = verify_file(args.bundle, load_pubkey(args.pubkey))
            print(f"{args.bundle}: signature and {len(m['files'])} file hashes good, "
                  f"version {m['version']}")
    except ReleaseError as e:
        print(f"release: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
