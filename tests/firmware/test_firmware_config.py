"""The device configuration (firmware/config.py, firmware/config.example.json) and
`egs-sim device`, which merges a file and options and runs the real firmware."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware import config
from sim.services import ROOT
from tests.firmware.fixtures import meter, subscriber, wait_for  # noqa: F401

EXAMPLE = ROOT / "firmware" / "config.example.json"


def _keys(d, prefix=""):
    for key, value in d.items():
        if key.startswith("_"):
            continue
        yield prefix + key
        if isinstance(value, dict):
            yield from _keys(value, prefix + key + ".")


def test_example_validates_and_documents_every_key():
    example = json.loads(EXAMPLE.read_text())
    cfg = config.validate(example)
    assert set(_keys(cfg)) == set(_keys(config.defaults()))
    assert set(_keys(example)) == set(_keys(config.defaults())), "every key appears"

    def documented(section, where=""):
        for key, value in section.items():
            if key.startswith("_"):
                continue
            doc = value.get("_") if isinstance(value, dict) else section.get("_" + key)
            assert isinstance(doc, str) and len(doc) > 10, f"{where}{key} is not described"
            if isinstance(value, dict):
                documented(value, where + key + ".")
    documented(example)


@pytest.mark.parametrize("change, reason", [
    ({"device_id": None}, "device_id is missing"),
    ({"device_id": "a b"}, "device_id"),
    ({"community": "x" * 65}, "community"),
    ({"colour": 1}, "unknown key colour"),
    ({"meter": {"modle": "sdm630"}}, "unknown key meter.modle"),
    ({"meter": "sdm630"}, "meter must be a JSON object"),
    ({"meter": {"model": "sdm9"}}, "meter.model"),
    ({"meter": {"unit": 248}}, "meter.unit"),
    ({"meter": {"unit": True}}, "meter.unit must be an integer"),
    ({"meter": {"baud": 9601}}, "meter.baud"),
    ({"meter": {"parity": "X"}}, "meter.parity"),
    ({"broker": {"port": 0}}, "broker.port"),
    ({"broker": {"host": ""}}, "broker.host"),
    ({"broker": {"tls": "yes"}}, "broker.tls"),
    ({"mqtt": {"keepalive_s": 1}}, "mqtt.keepalive_s"),
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": "60"}, "interval_s must be a number"),
    ({"wifi": {"ssid": "x" * 33}}, "wifi.ssid"),
    ({"wifi": {"password": "a\nb"}}, "control character"),
    ({"log": {"max_bytes": 100}}, "log.max_bytes"),
    # the flash log refuses segments under 256 bytes at boot: a device rebooting forever
    ({"log": {"max_bytes": 4096, "segments": 17}}, "log.max_bytes / log.segments"),
    # unhashable values where a name is looked up (TypeError under CPython before)
    ({"meter": {"model": []}}, "meter.model"),
    ({"meter": {"model": {"vendor": "x"}}}, "meter.model"),
])
def test_bad_configurations_name_the_key(change, reason):
    base = {"device_id": "d1", "community": "c1"}
    cfg = dict(base)
    cfg.update(change)
    with pytest.raises(config.ConfigError, match=reason.replace(".", r"\.")):
        config.validate(cfg)


def test_load_rejects_broken_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"device_id": "d1", ')
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        config.load(str(p))
    p.write_text("[]")
    with pytest.raises(config.ConfigError, match="JSON object"):
        config.load(str(p))


def test_public_view_hides_passwords():
    cfg = config.validate({"device_id": "d1", "community": "c1",
                           "mqtt": {"password": "pw"}, "wifi": {"password": "wpw"}})
    pub = config.public(cfg)
    assert pub["mqtt"]["password"] == "***" and pub["wifi"]["password"] == "***"
    assert cfg["mqtt"]["password"] == "pw"


def _egs_sim(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sim.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False, **kw)


def test_egs_sim_device_rejects_bad_options(tmp_path):
    res = _egs_sim("device", "--state-dir", tmp_path / "s", "--community", "c1",
                   "--device-id", "bad/id", "--broker", "127.0.0.1:1883")
    assert res.returncode == 2 and "device_id" in res.stderr
    res = _egs_sim("device", "--state-dir", tmp_path / "s", "--community", "c1",
                   "--device-id", "d1", "--broker", "nohostport")
    assert res.returncode == 2 and "HOST:PORT" in res.stderr
    res = _egs_sim("device", "--config", tmp_path / "missing.json", "--state-dir", tmp_path)
    assert res.returncode == 2 and "cannot read" in res.stderr
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    res = _egs_sim("device", "--config", listed, "--state-dir", tmp_path / "s")
    assert res.returncode == 2 and "JSON object" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    listed.write_text(json.dumps({"device_id": "d1", "community": "c1",
                                  "meter": {"model": ["sdm630"]}}))
    res = _egs_sim("device", "--config", listed, "--state-dir", tmp_path / "s")
    assert res.returncode == 2 and "meter.model" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_the_smallest_accepted_log_opens(tmp_path):
    from firmware.flashlog import FlashLog

    cfg = config.validate({"device_id": "d1", "community": "c1",
                           "log": {"max_bytes": 4096, "segments": 16}})
    log = FlashLog(str(tmp_path / "log"), cfg["log"]["max_bytes"], cfg["log"]["segments"])
    log.append(1, 10, 0, b"OCMF|" + b"x" * 470)
    assert log.last_seq == 1


def test_egs_sim_device_options_override_the_file(tmp_path, mosquitto, meter, subscriber):
    example = json.loads(EXAMPLE.read_text())
    example["broker"].update(tls=False, ca="")
    cfg_file = tmp_path / "device.json"
    cfg_file.write_text(json.dumps(example))
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "device", "--config", cfg_file,
         "--meter", f"tcp:127.0.0.1:{meter.port}", "--broker", f"127.0.0.1:{mosquitto.port}",
         "--community", "c1", "--device-id", "cli-1", "--interval", "0.3",
         "--state-dir", state, "--mqtt-user", "", "--mqtt-password", ""],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        wait_for(lambda: len(subscriber.seqs("cli-1")) >= 2, what="readings from egs-sim device")
        saved = json.loads((state / "config.json").read_text())
        assert saved["device_id"] == "cli-1" and saved["community"] == "c1"
        assert saved["broker"]["port"] == mosquitto.port and saved["interval_s"] == 0.3
        assert saved["meter"]["model"] == "sdm630" and saved["mqtt"]["keepalive_s"] == 60
        assert (state / "device.key").exists()
        assert stat_mode(state) == 0o700 and stat_mode(state / "device.key") == 0o600
        status = subscriber.status["cli-1"]
        assert status["state"] == "online" and len(bytes.fromhex(status["pubkey"])) == 65
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    # a second start with no options reuses the state directory's configuration and key
    key = (state / "device.key").read_text()
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "device", "--state-dir", state],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        n = len(subscriber.seqs("cli-1"))
        wait_for(lambda: len(subscriber.seqs("cli-1")) >= n + 2, what="readings after restart")
        assert (state / "device.key").read_text() == key
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        time.sleep(0.1)


def stat_mode(path):
    return Path(path).stat().st_mode & 0o777
