"""A broker killed under a running gateway and started again: the gateway's log says so as
a WARNING followed by the reconnect, with no unexplained ERROR line (paho's socket error)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from sim.services import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_broker_kill_is_a_warning_then_a_reconnect(tmp_path):
    broker = Mosquitto(tmp_path / "mq").start()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ncommunity = "c1"\ncomponents = []\n'
                    f'[store]\ndb = "{tmp_path / "gw.sqlite"}"\n'
                    f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\nreconnect_max_s = 0.5\n')
    log_path = tmp_path / "gw.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGS_")}
    with open(log_path, "wb") as log:
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(conf)], cwd=ROOT,
                              env=dict(env, PYTHONUNBUFFERED="1"), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)

    def log_text():
        assert gw.poll() is None, log_path.read_text()
        return log_path.read_text()

    def connections():
        return log_text().count("connected to MQTT broker")
    try:
        wait_for(lambda: connections() == 1, 60, "the gateway to connect")
        broker.kill()
        wait_for(lambda: "retrying in" in log_text(), 60, "the gateway to notice")
        broker = Mosquitto(tmp_path / "mq", port=broker.port).start()
        wait_for(lambda: connections() == 2, 60, "the gateway to reconnect")
    finally:
        broker.stop()
        if gw.poll() is None:
            os.killpg(gw.pid, signal.SIGTERM)
        gw.wait(30)
    lines = log_path.read_text().splitlines()
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], lines
    lost = [i for i, line in enumerate(lines) if " WARNING " in line and "retrying in" in line]
    again = [i for i, line in enumerate(lines) if "connected to MQTT broker" in line]
    assert lost and len(again) == 2 and again[0] < lost[0] < again[1], lines
