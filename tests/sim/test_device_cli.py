"""`egs-sim device` as a process: SIGTERM reaches the firmware (no orphan keeps running on
the state directory), and a second device on a state directory in use is refused."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from sim.services import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _device(state_dir, tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child writes it
    try:
        return subprocess.Popen([sys.executable, "-m", "sim.cli", "device", "--state-dir",
                                 str(state_dir), "--pty", str(tmp_path / f"{name}.tty")],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def _children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_firmware_too_and_a_second_device_is_refused(tmp_path):
    state = tmp_path / "house-1"
    first = _device(state, tmp_path, "first")
    firmware = []
    try:
        def started():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            firmware[:] = [p for p in _children(first.pid)
                           if "micropython" in Path(f"/proc/{p}/cmdline").read_text()]
            return firmware
        wait_for(started, 60, "the firmware process")

        second = subprocess.run([sys.executable, "-m", "sim.cli", "device", "--state-dir",
                                 str(state)], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, check=False)
        assert second.returncode == 1, second
        errors = second.stderr.strip().splitlines()
        assert len(errors) == 1 and f"in use by pid {first.pid}" in errors[0], second.stderr
        assert "Traceback" not in second.stderr

        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, (tmp_path / "first.log").read_text()
        assert not _alive(firmware[0]), "the firmware outlived egs-sim device"
        assert not (tmp_path / "first.tty").exists()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        for pid in firmware:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # the directory is free again: the next device starts on it
    again = _device(state, tmp_path, "again")
    try:
        wait_for(lambda: (tmp_path / "again.tty").exists() or again.poll() is not None, 60,
                 "the restarted device")
        assert again.poll() is None, (tmp_path / "again.log").read_text()
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)


def _sim_device(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    return subprocess.run([sys.executable, "-m", "sim.cli", "device", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_mqtt_password_is_read_from_a_file(tmp_path):
    import json
    state, secret = tmp_path / "house-1", tmp_path / "mqtt.pw"
    secret.write_text("s3cret-device-pw\n")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115 - the child writes it
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim.cli", "device", "--config",
             str(ROOT / "firmware" / "config.example.json"), "--state-dir", str(state),
             "--mqtt-user", "house-1", "--mqtt-password-file", str(secret),
             "--pty", str(tmp_path / "dev.tty")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    try:
        wait_for(lambda: (state / "config.json").exists(), 60, "the device's config")
        saved = json.loads((state / "config.json").read_text())
        assert saved["mqtt"]["username"] == "house-1"
        assert saved["mqtt"]["password"] == "s3cret-device-pw"
        assert "warning" not in (tmp_path / "dev.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_the_mqtt_password_option_warns_and_a_bad_password_file_is_one_line(tmp_path):
    state = tmp_path / "house-1"
    res = _sim_device("--state-dir", state, "--config", tmp_path / "none.json",
                      "--mqtt-password", "pw-1")
    assert res.stderr.startswith("egs-sim: warning: --mqtt-password ") and \
        "--mqtt-password-file" in res.stderr.splitlines()[0], res.stderr
    res = _sim_device("--state-dir", state, "--mqtt-password-file", tmp_path / "nope.pw")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "--mqtt-password-file: cannot read" in res.stderr
    res = _sim_device("--state-dir", state, "--mqtt-password-file", "-")
    assert res.returncode == 2 and "console" in res.stderr and res.stderr.count("\n") == 1
    assert not state.exists()
