"""The shared simulated clock (gateway/clock.py, EGS_CLOCK): the same time in the gateway,
the firmware under MicroPython, the meter emulator and the charge point emulator."""
import json
import subprocess
import time

import pytest

from gateway import clock
from sim.services import ROOT, micropython

DAY = 1_700_006_400          # 2023-11-15 00:00 UTC


@pytest.fixture
def sim_clock(monkeypatch):
    def set_clock(origin=DAY, speed=600.0, real_start=None):
        value = clock.make(origin, speed, real_start)
        monkeypatch.setenv(clock.ENV, value)
        return value
    return set_clock


def test_unset_is_the_wall_clock(monkeypatch):
    monkeypatch.delenv(clock.ENV, raising=False)
    assert not clock.active()
    before = time.time()
    assert before <= clock.now() <= time.time()
    assert clock.speed() == 1.0


def test_runs_from_origin_at_speed(sim_clock):
    start = time.time()
    sim_clock(DAY, 600.0, start)
    t1 = clock.now()
    time.sleep(0.05)
    t2 = clock.now()
    elapsed = time.time() - start
    assert clock.active() and clock.speed() == 600.0
    assert DAY <= t1 < t2 <= DAY + elapsed * 600 + 1
    assert t2 - t1 >= 0.05 * 600 * 0.9


def test_real_start_in_the_future_is_before_origin(sim_clock):
    sim_clock(DAY, 100.0, time.time() + 2)
    assert DAY - 200 - 1 < clock.now() < DAY


@pytest.mark.parametrize("bad", ["", "1:2", "a:b:c", "1:0:5", "1:-3:5", "-1:2:3", "1:2:3:4"])
def test_malformed_value_is_a_clear_error(monkeypatch, bad):
    if not bad:
        monkeypatch.setenv(clock.ENV, bad)
        assert not clock.active()                     # empty = unset
        return
    monkeypatch.setenv(clock.ENV, bad)
    with pytest.raises(ValueError, match="EGS_CLOCK"):
        clock.now()


def test_firmware_hal_follows_the_shared_clock(sim_clock):
    """The unix HAL under the real MicroPython binary reads the same EGS_CLOCK."""
    value = sim_clock(DAY, 600.0, time.time())
    code = ("import json\nfrom firmware.hal.unix import Hal\nh = Hal('/tmp/egs-clock-test')\n"
            "a = h.time_ms()\nimport time\ntime.sleep_ms(200)\nb = h.time_ms()\n"
            "print(json.dumps([a, b]))\n")
    here = clock.now()
    out = subprocess.run([micropython(), "-c", code], capture_output=True, text=True, timeout=30, check=False,
                         env={"MICROPYPATH": f".frozen:{ROOT}", "EGS_CLOCK": value}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    a, b = json.loads(out.stdout.strip().splitlines()[-1])
    after = clock.now()
    assert here * 1000 - 1000 <= a <= b <= after * 1000 + 1000
    assert b - a >= 0.2 * 600 * 1000 * 0.9           # 200 ms real = 2 simulated minutes


def test_firmware_hal_refuses_a_malformed_clock():
    code = "from firmware.hal.unix import Hal\nHal('/tmp/egs-clock-test')\n"
    out = subprocess.run([micropython(), "-c", code], capture_output=True, text=True, timeout=30, check=False,
                         env={"MICROPYPATH": f".frozen:{ROOT}", "EGS_CLOCK": "tomorrow"}, cwd=ROOT)
    assert out.returncode != 0 and "EGS_CLOCK must be" in out.stdout + out.stderr


def test_meter_emulator_integrates_on_the_shared_clock(sim_clock):
    """1 kW flat for 0.5 s real at 3600x is 500 Wh; the emulator's own speed is not used."""
    from sim.meter import MeterEmulator

    sim_clock(DAY, 3600.0, time.time())
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), profile="flat", flat_w=1000,
                       speed=1.0) as meter:
        t0 = clock.now()
        imp0, _ = meter.energy_wh()
        time.sleep(0.5)
        imp1, _ = meter.energy_wh()
        t1 = clock.now()
    expected = (t1 - t0) * 1000 / 3600
    assert abs((imp1 - imp0) - expected) <= 0.1 * expected + 20


def test_charge_point_timestamps_follow_the_shared_clock(sim_clock):
    from sim.charger import SimChargePoint

    sim_clock(DAY, 600.0, time.time())
    cp = SimChargePoint("ws://127.0.0.1:1/ocpp", "CP-CLOCK")
    assert abs(cp.now() - clock.now()) < 5
    cp.clock_offset = 90
    assert abs(cp.now() - clock.now() - 90) < 5


def test_gateway_domain_time_follows_the_shared_clock(sim_clock, tmp_path):
    """Interval closing, the store's timestamps, the market's and the central system's
    clocks: all on the simulated day."""
    from gateway import db
    from gateway.ingest import intervals, store
    from gateway.market import exchange
    from ocpp_cs import store as ocpp_store

    sim_clock(DAY, 600.0, time.time())
    conn = db.connect(tmp_path / "gw.sqlite")
    store.init(conn)
    assert abs(store._now() - clock.now()) < 5
    assert abs(ocpp_store.now() - clock.now()) < 5
    assert intervals.closed_intervals(conn) == []
    assert abs(exchange.Market(conn, "demo")._now() - clock.now()) < 5
    conn.close()
