"""firmware/meters.py and the emulator sim/meter.py: exact Wh from every model's registers.

The oracle for float32 registers is struct + fractions.Fraction (CPython), never the code
under test; for integer registers it is plain integer arithmetic on the served words.
The real thing runs the MicroPython binary as master against the pymodbus emulator.
"""
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import meters, modbus
from firmware.hal.unix_uart import TcpUart, TtyUart
from sim.meter import FAULTS, MeterEmulator, encode_field, profile_power_w
from sim.services import free_port, wait_port
from tests.firmware.modbus_fixtures import f32_words_to_wh, int_words, mp_probe  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests/vectors/modbus_float32.json"
MODELS = sorted(meters.MODELS)


def oracle_f32(bits, mul, div):
    words = (bits >> 16, bits & 0xFFFF)
    value = struct.unpack(">f", struct.pack(">HH", *words))[0]
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "infinite"
    return f32_words_to_wh(words, mul, div)


def expected_field(em, name):
    """What an honest decoder must get from the words the emulator serves now."""
    _fc, _addr, kind, mul, div = em.model[name]
    words = em.registers(name)
    if kind == meters.F32:
        return f32_words_to_wh(words, mul, div)
    raw = int_words(words)
    if kind.startswith("s") and raw >> (16 * len(words) - 1):
        raw -= 1 << (16 * len(words))
    q = round(raw * mul / div) if abs(raw * mul) < 2**52 else None
    assert q is not None
    return q


# ---------------------------------------------------------------- decoding, no I/O

def test_shared_vectors_match_the_oracle_and_the_decoder():
    cases = json.loads(VECTORS.read_text())["cases"]
    assert len(cases) > 250
    for bits_hex, mul, div, want in cases:
        bits = int(bits_hex, 16)
        assert oracle_f32(bits, mul, div) == want, bits_hex
        if isinstance(want, str):
            with pytest.raises(meters.MeterFault) as exc:
                meters.f32_scaled(bits, mul, div)
            assert exc.value.reason == want
        else:
            assert meters.f32_scaled(bits, mul, div) == want


@given(st.integers(0, 2**32 - 1), st.sampled_from([(1000, 1), (1, 1), (1, 100), (7, 3)]))
def test_float32_decoding_equals_exact_rounding(bits, scale):
    want = oracle_f32(bits, *scale)
    if isinstance(want, str):
        with pytest.raises(meters.MeterFault):
            meters.f32_scaled(bits, *scale)
    else:
        assert meters.f32_scaled(bits, *scale) == want


def test_the_numbers_in_the_docstring():
    f32 = meters.F32
    big = bytes.fromhex("47c0e6b7")                   # float32 nearest 98765.432
    assert struct.unpack(">f", big)[0] == 98765.4296875
    assert meters.decode(big, 0, f32, 1000, 1) == 98_765_430
    assert meters.decode(struct.pack(">f", 0.0625), 0, f32, 1000, 1) == 62    # tie -> even
    assert meters.decode(struct.pack(">f", 0.1875), 0, f32, 1000, 1) == 188
    assert meters.decode(struct.pack(">f", -0.0), 0, f32, 1000, 1) == 0


@given(st.integers(0, 16_383_999))
def test_every_wh_below_16384_kwh_survives_float32(wh):
    """Below 2**14 kWh a float32 step is under 1 Wh, so the round trip is exact."""
    words = encode_field(meters.MODELS["sdm630"]["import_wh"], wh)
    assert meters.decode(struct.pack(">HH", *words), 0, meters.F32, 1000, 1) == wh


def test_integer_registers():
    assert meters.decode((9_876_543).to_bytes(8, "big"), 0, meters.U64, 10, 1) == 98_765_430
    assert meters.decode((-230_050 & 0xFFFFFFFF).to_bytes(4, "big"), 0, meters.S32, 1, 100) \
        == -2300                                       # -2300.5 W -> even
    assert meters.decode((230_150).to_bytes(4, "big"), 0, meters.S32, 1, 100) == 2302
    assert meters.decode((2**64 - 2).to_bytes(8, "big"), 0, meters.U64, 10, 1) == (2**64 - 2) * 10
    for data, kind in ((b"\xff" * 8, meters.U64), (b"\xff" * 4, meters.U32),
                       (b"\x7f\xff\xff\xff", meters.S32)):
        with pytest.raises(meters.MeterFault) as exc:
            meters.decode(data, 0, kind)
        assert exc.value.reason == "unavailable"


def test_model_tables_are_well_formed():
    for name, m in meters.MODELS.items():
        assert m["vendor"] and m["model"]
        for key in ("import_wh", "export_wh", "power_w", "serial"):
            field = m[key]
            if field is None:
                assert key == "serial"
                continue
            fc, addr, kind, mul, div = field
            assert fc in (3, 4) and 0 <= addr <= 0xFFFF and kind in meters.WORDS
            assert mul > 0 and div > 0, name
        assert len(meters.read_plan([m["import_wh"], m["export_wh"]])) == 1, name
    assert meters.get_model("sdm630")["import_wh"] == (4, 0x0048, "f32", 1000, 1)
    assert meters.get_model("abb_b23")["import_wh"] == (3, 0x5000, "u64", 10, 1)
    with pytest.raises(ValueError, match="unknown meter model"):
        meters.get_model("sdm999")


def test_check_progress_refuses_a_decrease():
    meters.check_progress(None, (0, 0))
    meters.check_progress((10, 20), (10, 21))
    with pytest.raises(meters.MeterFault) as exc:
        meters.check_progress((10, 20), (10, 19))
    assert (exc.value.reason, exc.value.field) == ("decrease", "export_wh")


# ---------------------------------------------------------------- against the emulator (CPython)

def cpython_master(em, timeout_ms=300, retries=1):
    return modbus.Master(TcpUart("127.0.0.1", em.port), timeout_ms=timeout_ms, retries=retries)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_reads_exact_values(model):
    big = 98_765_430 if model == "abb_b23" else 98_765_432
    with MeterEmulator(model, tcp=("127.0.0.1", 0), import_wh=big, export_wh=4_321_987,
                       flat_w=-2345, speed=0) as em:
        master = cpython_master(em)
        imp, exp = meters.read_energy(master, model, 1)
        assert (imp, exp) == (expected_field(em, "import_wh"), expected_field(em, "export_wh"))
        assert imp == 98_765_430                       # float32 / 0.01 kWh resolution
        assert exp == (4_321_980 if model == "abb_b23" else 4_321_987)   # ABB: whole 10 Wh
        assert meters.read_power_w(master, model, 1) == -2345
        serial = meters.read_serial(master, model, 1)
        assert serial == (None if model == "ddsu666" else "12345678")
        reads = 2 if model == "ddsu666" else 3      # energy in one request, power, serial
        assert master.counters["requests"] == reads and master.errors() == 0
        master.uart.close()


@pytest.mark.parametrize("model,fault,reason", [
    ("sdm630", "nan", "nan"), ("sdm120", "infinite", "infinite"),
    ("sdm72", "negative", "negative"), ("ddsu666", "nan", "nan"),
    ("abb_b23", "nan", "unavailable"),
])
def test_value_faults_are_meter_faults_never_readings(model, fault, reason):
    with MeterEmulator(model, tcp=("127.0.0.1", 0), import_wh=5000, speed=0) as em:
        master = cpython_master(em)
        em.set_fault(fault)
        with pytest.raises(meters.MeterFault) as exc:
            meters.read_energy(master, model, 1)
        assert exc.value.reason == reason and exc.value.field == "import_wh"
        assert master.errors() == 0                    # the link was fine
        em.clear_fault()
        assert meters.read_energy(master, model, 1) == (5000, 0)
        master.uart.close()


def test_integer_models_cannot_fake_float_faults():
    em = MeterEmulator("abb_b23", tcp=("127.0.0.1", 0))
    for fault in ("infinite", "negative"):
        with pytest.raises(ValueError, match="cannot hold"):
            em.set_fault(fault)


def test_counter_reset_is_seen_as_a_decrease():
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), import_wh=10_000, export_wh=500,
                       speed=0) as em:
        master = cpython_master(em)
        first = meters.read_energy(master, "sdm630", 1)
        em.set_energy(import_wh=0)
        second = meters.read_energy(master, "sdm630", 1)
        assert second == (0, 500)
        with pytest.raises(meters.MeterFault) as exc:
            meters.check_progress(first, second)
        assert exc.value.reason == "decrease"
        master.uart.close()


def test_missing_serial_register_gives_none_other_exceptions_propagate():
    with MeterEmulator("sdm120", tcp=("127.0.0.1", 0), speed=0) as em:
        master = cpython_master(em)
        em.set_fault("exception", code=2)
        assert meters.read_serial(master, "sdm120", 1) is None
        em.set_fault("exception", code=4)
        with pytest.raises(modbus.ExceptionResponse):
            meters.read_serial(master, "sdm120", 1)
        master.uart.close()


# ---------------------------------------------------------------- the emulator itself

def test_profiles():
    noon, night = 12 * 3600, 2 * 3600
    assert profile_power_w("flat", noon, 1500) == 1500
    assert profile_power_w("pv", noon) < -2000 < 0 < profile_power_w("pv", night)
    assert profile_power_w("household", 19 * 3600) > profile_power_w("household", night) > 0
    with pytest.raises(ValueError):
        profile_power_w("wind", noon)


def test_counters_follow_the_profile_on_the_simulated_clock():
    noon = datetime(2026, 6, 21, 12, tzinfo=UTC).timestamp()
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), profile="pv", speed=600,
                       start_epoch=noon, import_wh=1000, export_wh=1000) as em:
        time.sleep(0.3)                                 # ~3 simulated minutes of sunshine
        imp, exp = em.energy_wh()
        assert imp == 1000 and exp > 1000               # a PV roof at noon exports
    night = datetime(2026, 6, 21, 1, tzinfo=UTC).timestamp()
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), profile="household", speed=3600,
                       start_epoch=night) as em:
        time.sleep(0.2)
        imp, exp = em.energy_wh()
        assert imp > 0 and exp == 0
    with MeterEmulator("sdm630", tcp=("127.0.0.1", 0), speed=0, import_wh=7) as em:
        time.sleep(0.05)
        assert em.energy_wh() == (7, 0)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one"),
    ({"tcp": ("127.0.0.1", 0), "serial_link": "/tmp/x"}, "exactly one"),
    ({"tcp": ("127.0.0.1", 0), "profile": "wind"}, "unknown profile"),
    ({"tcp": ("127.0.0.1", 0), "unit": 0}, "unit"),
    ({"tcp": ("127.0.0.1", 0), "import_wh": -1}, ">= 0"),
    ({"tcp": ("127.0.0.1", 0), "speed": -1}, "speed"),
])
def test_emulator_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeterEmulator("sdm630", **kwargs)


def test_emulator_refuses_bad_faults():
    em = MeterEmulator("sdm630", tcp=("127.0.0.1", 0))
    with pytest.raises(ValueError, match="unknown fault"):
        em.set_fault("gremlins")
    with pytest.raises(ValueError, match="exception code"):
        em.set_fault("exception", code=99)
    with pytest.raises(ValueError, match="count"):
        em.set_fault("crc", count=0)
    for bad in ([], {"fault": "gremlins"}, {"volts": 230}):
        with pytest.raises((TypeError, ValueError)):
            em.apply_control(bad)
    assert set(FAULTS) >= {"timeout", "crc", "exception", "nan"}


# ---------------------------------------------------------------- MicroPython master, every model

@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_micropython_reads_every_model(tmp_path, mp_probe, transport):
    for model in MODELS:
        big = 98_765_430 if model == "abb_b23" else 98_765_432
        kw = {"import_wh": big, "export_wh": 1_000_001, "flat_w": 4321, "speed": 0}
        if transport == "pty":
            link = tmp_path / f"{model}.tty"
            em = MeterEmulator(model, serial_link=link, unit=17, **kw)
            args = ["--tty", str(link)]
        else:
            em = MeterEmulator(model, tcp=("127.0.0.1", 0), unit=17, **kw)
        with em:
            if transport == "tcp":
                args = ["--tcp", f"127.0.0.1:{em.port}"]
            probe = mp_probe(args)
            energy = probe.ask(op="energy", model=model, unit=17)
            assert energy["ok"], energy
            assert energy["value"] == [expected_field(em, "import_wh"),
                                       expected_field(em, "export_wh")]
            assert energy["value"][0] == 98_765_430
            power = probe.ask(op="power", model=model, unit=17)
            assert power["value"] == 4321
            serial = probe.ask(op="serial", model=model, unit=17)
            assert serial["ok"] and serial["value"] == (None if model == "ddsu666"
                                                        else "12345678")
            em.set_fault("nan")
            fault = probe.ask(op="energy", model=model, unit=17)
            assert not fault["ok"] and fault["error"] == "MeterFault"
            assert fault["reason"] == ("unavailable" if model == "abb_b23" else "nan")
            assert fault["counters"]["failed"] == 0
            probe.close()


# ---------------------------------------------------------------- the CLI

def egs_sim(*args):
    return subprocess.Popen([sys.executable, "-m", "sim.cli", "meter", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def test_cli_over_tcp_with_control_file(tmp_path):
    port = free_port()
    control = tmp_path / "control.json"
    proc = egs_sim("--model", "abb_b23", "--tcp", f"127.0.0.1:{port}", "--import-wh",
                   "98765430", "--speed", "0", "--control", str(control))
    try:
        wait_port(port, proc=proc)
        master = modbus.Master(TcpUart("127.0.0.1", port), timeout_ms=300, retries=0)
        assert meters.read_energy(master, "abb_b23", 1) == (98_765_430, 0)
        control.write_text(json.dumps({"fault": "exception", "code": 2}))
        deadline = time.monotonic() + 10
        while True:
            try:
                meters.read_energy(master, "abb_b23", 1)
            except modbus.ExceptionResponse as exc:
                assert exc.code == 2
                break
            assert time.monotonic() < deadline, "control file not applied"
            time.sleep(0.1)
        control.write_text(json.dumps({"fault": None, "import_wh": 5}))
        while True:
            try:
                if meters.read_energy(master, "abb_b23", 1) == (0, 0):   # 5 Wh < 0.01 kWh
                    break
            except modbus.ExceptionResponse:
                pass
            assert time.monotonic() < deadline, "control file not applied"
            time.sleep(0.1)
        master.uart.close()
    finally:
        assert stop(proc) == 0, proc.stderr.read()


def test_cli_serial_link_publishes_and_removes_the_pty(tmp_path):
    link = tmp_path / "meter0"
    proc = egs_sim("--model", "sdm630", "--serial-link", str(link), "--import-wh", "42",
                   "--speed", "0", "--fault", "crc:1")
    try:
        deadline = time.monotonic() + 15
        while not link.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert os.readlink(link).startswith("/dev/pts/")
        with TtyUart(str(link), 9600) as uart:
            master = modbus.Master(uart, timeout_ms=300, retries=1)
            assert meters.read_energy(master, "sdm630", 1) == (42, 0)
            assert master.counters["crc_errors"] == 1          # --fault crc:1
    finally:
        code = stop(proc)
    assert code == 0
    assert not link.exists() and not link.is_symlink()


@pytest.mark.parametrize("args,message", [
    ([], "exactly one"),
    (["--tcp", "nowhere"], "HOST:PORT"),
    (["--tcp", "127.0.0.1:1", "--serial-link", "/tmp/x"], "exactly one"),
    (["--tcp", "127.0.0.1:1", "--fault", "gremlins"], "unknown fault"),
    (["--tcp", "127.0.0.1:1", "--model", "sdm999"], "sdm999"),
    (["--serial-link", "/proc/version"], "cannot open"),
])
def test_cli_bad_arguments_fail_with_one_clear_line(args, message):
    proc = egs_sim(*args)
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert message in err
    assert "Traceback" not in err
