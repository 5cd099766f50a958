"""The protocol walk-through `make demo` runs: device-side signing under MicroPython,
verification on CPython, a tampered record refused."""
from sim import demo_protocol


def test_protocol_walkthrough_verifies_and_refuses_tampering():
    lines = []
    rec = demo_protocol.run(out=lines.append)
    assert rec.import_wh == 98765432 and rec.export_wh == 1234567
    assert any("rejected as expected: SignatureMismatch" in line for line in lines)
