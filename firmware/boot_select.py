"""Which application copy to boot: A/B slots with try-once-then-roll-back.

Every change of <root>/boot.json is written to boot.tmp and renamed over (atomic on
LittleFS and POSIX), so a power cut leaves either the old or the new state, never a mix.
Nothing here touches the flash log, the key or the counters: they live outside the slots.

The application (the .mpy files of a release bundle) sits twice, in <root>/app_a and
<root>/app_b. A slot staged by firmware/ota.py (`stage`) gets exactly one boot (`choose`);
unless that boot calls `confirm` (after its first signed reading), the next one rolls back
and names the failed version in "rolled_back", for the status. This module is installed
once, at the root, outside the slots (`egs-gw device flash`), so a bad release cannot break
the selector. Why our own: MicroPython's only A/B mechanism is the ESP32 partition table for
MicroPython itself (firmware/hal/esp32_ota.py); the application files need this.
"""
import json
import os
import sys

SLOTS = ("a", "b")
STATE = "boot.json"
RESTART_EXIT = 75    # unix port: "reset me" to the supervisor (sim/device.py, the OTA tests)


def _path(root, name):
    return (root.rstrip("/") + "/" + name) if root else "/" + name


def slot_dir(root, slot):
    return _path(root, "app_" + slot)


# boot.json: the confirmed slot, the slot staged for its one trial boot, whether that boot
# has begun, and the version of the last rollback.
def default_state():
    return {"active": "a", "pending": None, "tries": 0, "rolled_back": None}


def load(root):
    """The boot state; the default (slot a) when there is none or it is unreadable."""
    for name in (STATE, "boot.tmp"):
        try:
            with open(_path(root, name)) as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("active") in SLOTS \
                and state.get("pending") in (None,) + SLOTS:
            out = default_state()
            out.update(state)
            return out
    return default_state()


def save(root, state):
    tmp = _path(root, "boot.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(state))
        f.flush()
    os.rename(tmp, _path(root, STATE))


def other(slot):
    return "b" if slot == "a" else "a"


def choose(root):
    """The slot to boot now, with the try counted (and a rollback done) before returning."""
    state = load(root)
    pending = state["pending"]
    if pending is None or pending == state["active"]:
        return state["active"]
    if state["tries"] >= 1:
        state["rolled_back"] = version_of(root, pending)
        state["pending"] = None
        state["tries"] = 0
        save(root, state)
        return state["active"]
    # Written *before* the new code runs: if this boot ends without `confirm` (a crash, a hang
    # the watchdog resets, a power cut, a release that never signs a reading), the next one
    # finds tries == 1 and rolls back above.
    state["tries"] = 1
    save(root, state)
    return pending


def stage(root, slot):
    """Boot `slot` once at the next start (it must hold a checked release)."""
    state = load(root)
    if slot == state["active"]:
        raise ValueError("cannot stage the active slot")
    state["pending"] = slot
    state["tries"] = 0
    state["rolled_back"] = None
    save(root, state)


def running(root):
    """(slot, confirmed): the slot this boot runs and whether it is the confirmed one."""
    state = load(root)
    if state["pending"] is not None and state["tries"] >= 1:
        return state["pending"], False
    return state["active"], True


def confirm(root):
    """The pending slot booted and signed a reading: it becomes the active one. True if
    something changed."""
    state = load(root)
    if state["pending"] is None or state["tries"] < 1:
        return False
    state["active"] = state["pending"]
    state["pending"] = None
    state["tries"] = 0
    save(root, state)
    return True


def status(root):
    """The "ota" part of the device's status message at boot."""
    state = load(root)
    slot, confirmed = running(root)
    out = {"state": "idle", "slot": slot, "confirmed": confirmed}
    if state.get("rolled_back"):
        out["rolled_back"] = state["rolled_back"]
    return out


def version_of(root, slot):
    """The version in a slot's manifest, or None."""
    try:
        with open(slot_dir(root, slot) + "/manifest.json") as f:
            return json.loads(f.read()).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def _forget_application():
    for name in list(sys.modules):
        # Two startswith() calls, not one with a tuple: tuple prefixes came to MicroPython
        # only in 2025 (micropython#16812); the boot selector is the last code that should
        # need a recent build.
        if name == "firmware" or name.startswith("firmware.") or name == "protocol" \
                or name.startswith("protocol."):  # noqa: PIE810 - see above
            del sys.modules[name]


def boot(root, argv=None):
    """Put the chosen slot first on sys.path and run the application from it."""
    slot = choose(root)
    path = slot_dir(root, slot)
    _forget_application()
    if path not in sys.path:
        sys.path.insert(0, path)
    from firmware import main as app_main  # from the slot: the only copy on sys.path

    app_main.main(argv)


def _arg(argv, name):
    if name in argv:
        i = argv.index(name)
        if i + 1 < len(argv):
            return argv[i + 1]
    return None


def main():
    """Entry point. ESP32: /main.py (written by `egs-gw device flash`) is
    `import boot_select` + `boot_select.main()` with a machine.reset() after it, so a
    release that cannot even start resets into its rollback. Unix port:
    `micropython <state-dir>/boot_select.py --state-dir DIR`; an exception ends the
    process, and the supervisor (the power supply, in tests) starts it again."""
    if sys.platform == "esp32":
        boot("")
        return
    argv = list(sys.argv)
    boot(_arg(argv, "--state-dir") or ".", argv)


if __name__ == "__main__":
    main()
