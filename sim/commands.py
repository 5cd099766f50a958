"""Registry of `egs-sim` subcommands. Each emulator module appends its command here."""
import importlib

COMMANDS = []

# Each emulator lives in its own module and exposes `command` (a click command).
for _name in ("sim.meter", "sim.device", "sim.charger"):
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:
        if _e.name != _name:
            raise
        continue
    COMMANDS.append(_mod.command)
