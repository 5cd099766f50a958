"""firmware/boot_select.py and the input checks of firmware/ota.py under MicroPython."""
import json
import os

from firmware import boot_select as bs
from firmware import ota

ROOT = "/tmp/mp_test_boot_select"
_rm = ota._remove_tree


def _fresh():
    _rm(ROOT)
    os.mkdir(ROOT)
    for slot, version in (("a", "0.1.0"), ("b", "0.2.0")):
        os.mkdir(ROOT + "/app_" + slot)
        with open(ROOT + "/app_%s/manifest.json" % slot, "w") as f:
            f.write(json.dumps({"version": version}))


def teardown_module():
    _rm(ROOT)


def test_default_is_slot_a_confirmed():
    _fresh()
    assert bs.choose(ROOT) == "a"
    assert bs.running(ROOT) == ("a", True)
    assert not bs.confirm(ROOT)


def test_pending_slot_gets_one_try_then_rolls_back():
    _fresh()
    bs.stage(ROOT, "b")
    assert bs.choose(ROOT) == "b"             # first boot of the new version
    assert bs.running(ROOT) == ("b", False)
    assert bs.choose(ROOT) == "a"             # it never confirmed: rolled back
    state = bs.load(ROOT)
    assert state["pending"] is None and state["active"] == "a"
    assert state["rolled_back"] == "0.2.0"
    assert bs.choose(ROOT) == "a"             # and stays rolled back


def test_confirmed_slot_becomes_active():
    _fresh()
    bs.stage(ROOT, "b")
    assert bs.choose(ROOT) == "b"
    assert bs.confirm(ROOT)
    assert bs.running(ROOT) == ("b", True)
    assert bs.choose(ROOT) == "b" and bs.choose(ROOT) == "b"
    bs.stage(ROOT, "a")                       # the next update goes to the other slot
    assert bs.choose(ROOT) == "a"


def test_active_slot_cannot_be_staged():
    _fresh()
    try:
        bs.stage(ROOT, "a")
    except ValueError:
        return
    raise AssertionError("staged the running slot")


def test_cut_while_writing_state_keeps_old_or_new():
    _fresh()
    bs.stage(ROOT, "b")
    # a cut after boot.tmp was written but before the rename: boot.json is still valid
    with open(ROOT + "/boot.tmp", "w") as f:
        f.write('{"active": "a", "pen')
    assert bs.load(ROOT)["pending"] == "b"
    # boot.json lost or garbage: the rename's source is used, else the default
    os.remove(ROOT + "/boot.json")
    with open(ROOT + "/boot.tmp", "w") as f:
        f.write(json.dumps({"active": "a", "pending": "b", "tries": 0}))
    assert bs.load(ROOT)["pending"] == "b"
    with open(ROOT + "/boot.json", "w") as f:
        f.write("\x00\x00garbage")
    os.remove(ROOT + "/boot.tmp")
    assert bs.load(ROOT) == bs.default_state()
    with open(ROOT + "/boot.json", "w") as f:
        f.write(json.dumps({"active": "../x", "pending": None}))
    assert bs.choose(ROOT) == "a"


def test_parse_url():
    assert ota.parse_url("http://10.0.0.2:8080/fw.tar") == ("10.0.0.2", 8080, "/fw.tar")
    assert ota.parse_url("http://gw/x") == ("gw", 80, "/x")
    for bad in ("https://gw/x", "ftp://x", "http://:80/x", "http://gw:99999/x",
                "http://gw:x/y", None, 5, "http://" + "a" * 400):
        try:
            ota.parse_url(bad)
        except ota.OtaError:
            continue
        raise AssertionError("accepted %r" % (bad,))


class _Hal:
    name = "unix"

    def __init__(self, root):
        self.state_dir = root

    def log(self, message):
        pass


def test_update_command_is_checked():
    ok = {"cmd": "update", "url": "http://127.0.0.1:1/f.tar", "version": "0.2.0", "size": 100}
    for key, bad in (("url", "file:///etc/passwd"), ("version", "latest"), ("version", 2),
                     ("size", 0), ("size", 10 ** 9), ("size", True), ("size", "100")):
        msg = dict(ok)
        msg[key] = bad
        try:
            ota.check_command(msg)
        except ota.OtaError:
            continue
        raise AssertionError("accepted %r=%r" % (key, bad))
    assert ota.check_command(ok)["version"] == "0.2.0"


def test_update_refuses_old_versions_and_missing_key():
    _fresh()
    hal = _Hal(ROOT)
    msg = {"url": "http://127.0.0.1:1/f.tar", "version": "0.2.0", "size": 100}
    st = {}
    assert ota.run(hal, "0.3.0", msg, st) is False
    assert st["state"] == "failed" and "not newer" in st["error"]
    st = {}
    assert ota.run(hal, "0.2.0", msg, st) is False and st == {}   # already running it
    st = {}
    assert ota.run(hal, "0.1.0", msg, st) is False
    assert "release key" in st["error"]
    st = {}
    assert ota.run(hal, "0.1.0", {"version": "0.2.0"}, st) is False and st["state"] == "failed"
    assert bs.load(ROOT)["pending"] is None
    assert ota.newer("0.10.0", "0.9.9") and not ota.newer("0.1.0", "0.1.0")
