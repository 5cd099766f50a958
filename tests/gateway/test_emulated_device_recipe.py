"""docs/gateway.md "An emulated device end to end", run as written: the commands of its
code blocks (free ports in place of 1883 and 5020) as processes in an empty directory,
against the secured mosquitto of `egs-gw broker config`, until readings are stored."""
import json
import os
import re
import signal
import subprocess
from pathlib import Path

from sim.services import free_port, wait_for, wait_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## An emulated device end to end"


def recipe():
    """→ (lab.toml text, [shell commands]) from the section's code blocks."""
    text = (ROOT / "docs" / "gateway.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    blocks = dict(re.findall(r"```(toml|sh)\n(.*?)```", section, re.DOTALL))
    lines = blocks["sh"].replace("\\\n", " ").splitlines()
    return blocks["toml"], [line.strip() for line in lines if line.strip()]


def test_the_emulated_device_recipe_stores_readings(tmp_path):
    conf, commands = recipe()
    broker_port, meter_port = free_port(), free_port()

    def sub(text):
        return text.replace("1883", str(broker_port)).replace("5020", str(meter_port))

    (tmp_path / "lab.toml").write_text(sub(conf))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:/usr/sbin:/sbin:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    background = []
    last = commands.pop()
    assert last.startswith("egs-gw readings"), last
    try:
        for n, line in enumerate(commands):
            line = sub(line)
            if line.endswith("&"):
                log = open(tmp_path / f"bg{n}.log", "wb")  # noqa: SIM115 - the child writes it
                proc = subprocess.Popen(["bash", "-c", "exec " + line[:-1]], cwd=tmp_path, env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                log.close()
                background.append((line, proc, tmp_path / f"bg{n}.log"))
                # what it serves: a port of the recipe, or the device's console link
                for port in (broker_port, meter_port):
                    if str(port) in line and "egs-gw" not in line:
                        wait_port(port, timeout=30, proc=proc)
                pty = re.search(r"--pty (\S+)", line)
                if pty:
                    link = tmp_path / pty.group(1)
                    wait_for(lambda link=link, proc=proc: link.exists() or proc.poll() is not None,
                             60, "the device's console")
                    assert proc.poll() is None, (tmp_path / f"bg{n}.log").read_text()
            else:
                res = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=180, check=False)
                assert res.returncode == 0, (line, res.stdout, res.stderr)

        def readings():
            for line, proc, log in background:
                assert proc.poll() is None, (line, log.read_text()[-3000:])
            res = subprocess.run(["bash", "-c", sub(last) + " --json"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)["readings"]
        got = wait_for(readings, 120, "readings of house-1")
        assert {r["device_id"] for r in got} == {"house-1"}
        assert all(r["raw"].startswith("OCMF|") for r in got)
    finally:
        for _, proc, _ in reversed(background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
