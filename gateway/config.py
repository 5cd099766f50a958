"""Gateway configuration: one TOML file, validated at start.

Each component declares its own section with `section(name, fields)`; the loader
checks every key against those declarations so a typo or a wrong type is a clear
error naming the key (`mqtt.brokr: unknown key`), never a silent default.
Fields are `name: (type, default)`; a default of REQUIRED means the key must be given
when the section is used.

Keys that name files are declared with `paths=` (`maybe_paths=` for a value that is a
file or not, such as a key in hex): a relative path written in the file is resolved
against the file's directory, so `egs-gw run` under systemd and a technician's shell
elsewhere use the same files. Defaults and command-line paths stay relative to the
working directory.
"""
import os
import tomllib
from pathlib import Path

REQUIRED = object()
_SECTIONS = {}
_PATHS = {}          # section -> {key: True (always a path) or False (a path if such a file exists)}


class ConfigError(ValueError):
    pass


def section(name, fields, paths=(), maybe_paths=()):
    """Declare a config section. Called at import time by the component that owns it.
    `paths`: keys whose value is a file or directory; `maybe_paths`: keys whose value may be
    one (resolved only when that file exists beside the config)."""
    _SECTIONS[name] = dict(fields)
    keys = _PATHS.setdefault(name, {})
    keys.update(dict.fromkeys(paths, True))
    keys.update(dict.fromkeys(maybe_paths, False))


def _beside(base, value, always):
    """`value` resolved against directory `base` when it is a relative path."""
    if not value or os.path.isabs(value) or value.startswith("~"):
        return value
    resolved = os.path.join(base, value)
    return resolved if always or os.path.exists(resolved) else value


def _check(key, value, typ):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def load(path=None, overrides=None):
    """Return {section: {key: value}} with defaults filled in.

    `overrides` ({"section.key": value}) come from command-line options and win
    over the file; None values are ignored.
    """
    raw = {}
    base = None
    if path is not None:
        p = Path(path)
        base = os.path.dirname(os.path.abspath(p))
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    cfg = {}
    for name, body in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(_SECTIONS))})")
        if not isinstance(body, dict):
            raise ConfigError(f"{name}: must be a table [{name}]")
        fields = _SECTIONS[name]
        for key in body:
            if key not in fields:
                raise ConfigError(f"{name}.{key}: unknown key")
    for name, fields in _SECTIONS.items():
        body = raw.get(name, {})
        out = {}
        for key, (typ, default) in fields.items():
            if key in body:
                out[key] = _check(f"{name}.{key}", body[key], typ)
                if key in _PATHS.get(name, {}) and isinstance(out[key], str):
                    out[key] = _beside(base, out[key], _PATHS[name][key])
            else:
                out[key] = default
        cfg[name] = out
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        name, key = dotted.split(".", 1)
        typ = _SECTIONS[name][key][0]
        cfg[name][key] = _check(dotted, value, typ)
    return cfg


def require(cfg, dotted):
    """The value of a REQUIRED key, or a clear error naming it."""
    name, key = dotted.split(".", 1)
    value = cfg[name][key]
    if value is REQUIRED:
        raise ConfigError(f"{dotted}: required (set it in the config file or on the command line)")
    return value


section("store", {"db": (str, "egs-gateway.sqlite")}, paths=("db",))
section("gateway", {"community": (str, REQUIRED)})
