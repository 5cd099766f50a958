"""firmware.modbus and firmware.meters under MicroPython: CRC, frames, exact decoding.

Run: micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_modbus.py
(from the repository root with MICROPYPATH=.frozen:<root>; tests/protocol/test_micropython.py does it).
The same functions are checked against independent oracles under CPython in
tests/firmware/test_modbus.py and tests/firmware/test_meters.py; the link tests against the emulator run the
real binary through tests/mp/modbus_probe.py.
"""
import json

from firmware import meters, modbus

VECTORS = "tests/vectors/modbus_float32.json"


def frame(body):
    crc = modbus.crc16(body)
    return bytes(body) + bytes((crc & 0xFF, crc >> 8))


def raises(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


def test_crc_vectors():
    assert modbus.crc16(b"123456789") == 0x4B37
    assert modbus.build_request(1, 4, 0x48, 4) == bytes.fromhex("01040048000471df")
    assert modbus.build_request(1, 3, 0xFC00, 2) == bytes.fromhex("0103fc000002f45b")
    assert modbus.crc16(modbus.build_request(17, 3, 0x5000, 8)) == 0


def test_build_request_rejects_bad_arguments():
    for args in ((0, 4, 0, 1), (248, 4, 0, 1), (1, 6, 0, 1), (1, 4, 0, 0), (1, 4, 0, 126),
                 (1, 4, 0xFFFF, 2), (1, 4, -1, 1)):
        raises(ValueError, modbus.build_request, *args)


def test_parse_valid_and_exception_reply():
    reply = frame(bytes((1, 4, 4, 0x47, 0xC0, 0xE6, 0xB7)))
    assert modbus.parse_response(reply, 1, 4, 2) == bytes.fromhex("47c0e6b7")
    e = raises(modbus.ExceptionResponse, modbus.parse_response, frame(b"\x01\x84\x02"), 1, 4, 2)
    assert e.code == 2 and modbus.ModbusException is modbus.ExceptionResponse


def test_parse_every_damaged_reply_is_a_modbus_error():
    reply = frame(bytes((1, 3, 4, 0, 0x96, 0xB4, 0x3F)))
    for cut in range(len(reply)):
        raises(modbus.ModbusError, modbus.parse_response, reply[:cut], 1, 3, 2)
    for i in range(len(reply)):
        for bit in (1, 0x80):
            bad = bytearray(reply)
            bad[i] ^= bit
            raises(modbus.ModbusError, modbus.parse_response, bytes(bad), 1, 3, 2)
    raises(modbus.Timeout, modbus.parse_response, b"", 1, 3, 2)
    raises(modbus.FrameError, modbus.parse_response, reply, 2, 3, 2)     # other unit
    raises(modbus.FrameError, modbus.parse_response, reply, 1, 4, 2)     # other function
    raises(modbus.FrameError, modbus.parse_response, reply, 1, 3, 4)     # other count
    bad = bytearray(reply)
    bad[-1] ^= 0xFF
    raises(modbus.CrcError, modbus.parse_response, bytes(bad), 1, 3, 2)


def test_noise_before_a_valid_reply_is_skipped():
    reply = frame(bytes((1, 3, 4, 0, 0x96, 0xB4, 0x3F)))
    assert modbus.parse_response(b"\x00\xff\x01" + reply + b"\x00", 1, 3, 2) == reply[3:7]


def test_inter_frame_silence():
    assert modbus.t35_us(9600) == 4011
    assert modbus.t35_us(19200) == 2006
    assert modbus.t35_us(38400) == 1750
    assert modbus.t35_us(115200) == 1750


def test_float32_vectors_exact():
    with open(VECTORS) as f:
        cases = json.load(f)["cases"]
    for bits, mul, div, want in cases:
        b = int(bits, 16)
        if isinstance(want, str):
            e = raises(meters.MeterFault, meters.f32_scaled, b, mul, div)
            assert e.reason == want, (bits, e.reason)
        else:
            assert meters.f32_scaled(b, mul, div) == want, (bits, mul, div, want)


def test_integer_registers_and_not_available_patterns():
    ten_wh = (9876543).to_bytes(8, "big")
    assert meters.decode(ten_wh, 0, "u64", 10, 1) == 98765430
    assert meters.decode((-230050 & 0xFFFFFFFF).to_bytes(4, "big"), 0, "s32", 1, 100) == -2300
    assert meters.decode((230150).to_bytes(4, "big"), 0, "s32", 1, 100) == 2302
    for data, kind in ((b"\xff" * 8, "u64"), (b"\xff" * 4, "u32"), (b"\x7f\xff\xff\xff", "s32")):
        e = raises(meters.MeterFault, meters.decode, data, 0, kind, 1, 1)
        assert e.reason == "unavailable"


def test_read_plans_share_one_request():
    sdm = meters.MODELS["sdm630"]
    assert meters.read_plan([sdm["import_wh"], sdm["export_wh"]]) == [(4, 0x48, 4)]
    abb = meters.MODELS["abb_b23"]
    assert meters.read_plan([abb["import_wh"], abb["export_wh"]]) == [(3, 0x5000, 8)]
    chint = meters.MODELS["ddsu666"]
    assert meters.read_plan([chint["import_wh"], chint["export_wh"]]) == [(3, 0x4000, 12)]


def test_check_progress():
    meters.check_progress(None, (5, 5))
    meters.check_progress((5, 5), (5, 6))
    e = raises(meters.MeterFault, meters.check_progress, (5, 5), (4, 9))
    assert e.reason == "decrease" and e.field == "import_wh"
