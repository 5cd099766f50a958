"""The gateway's ledger key: an eth-account encrypted keystore (Web3 Secret Storage).

The password comes from a file (first line, trailing newline stripped) or from an
environment variable, never from the config file or the command line, and is
never logged or put into an exception message. The decrypted key lives only in
the `eth_account` LocalAccount object of the running process.
"""
import json
import os
import stat
from pathlib import Path


class KeystoreError(ValueError):
    pass


def read_password(password_file=None, password_env=None):
    if password_file:
        try:
            text = Path(password_file).read_text()
        except OSError as e:
            raise KeystoreError(f"cannot read the keystore password file {password_file}: {e.strerror}") from None
        return text.splitlines()[0] if text else ""
    if password_env and password_env in os.environ:
        return os.environ[password_env]
    raise KeystoreError(
        f"no keystore password: set ledger.password_file or the environment variable {password_env or '(none)'}")


def create(path, password, private_key=None, kdf=None, iterations=None):
    """Write a new keystore (from `private_key`, else a fresh key); refuses to overwrite.

    `kdf`/`iterations` default to eth-account's (scrypt); tests pass a cheap pbkdf2.
    """
    path = Path(path)
    if path.exists():
        raise KeystoreError(f"{path} exists already; not overwriting a key")
    from eth_account import Account  # imported here: it costs ~1 s at CLI start

    account = Account.from_key(private_key) if private_key else Account.create()
    data = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return account.address


def address(path):
    """The keystore's address without decrypting it (the file carries it)."""
    data = _read(path)
    if "address" not in data:
        raise KeystoreError(f"{path}: keystore has no address field")
    return "0x" + data["address"].lower().removeprefix("0x")


def load(path, password):
    from eth_account import Account

    data = _read(path)
    try:
        key = Account.decrypt(data, password)
    except ValueError:
        raise KeystoreError(f"{path}: wrong password or damaged keystore") from None
    return Account.from_key(key)


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no keystore at {path}: create one with `egs-gw ledger key new`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise KeystoreError(f"{path}: not a readable keystore JSON file ({type(e).__name__})") from None
