# mp-heapsize: 400K
"""firmware/app.py helpers under MicroPython: the reading schedule and record fields.

(The application as a whole runs in tests/test_firmware_*.py, against mosquitto and the
meter emulator; 400K here only because this test compiles the firmware from source.)"""
from firmware.app import QUARTER_MS, next_due, record_field

T0 = 1795464000 * 1000          # 2026-11-23 19:20:00 UTC, on a quarter hour


def test_due_at_multiples_of_the_interval():
    assert next_due(T0, 60000) == T0 + 60000
    assert next_due(T0 + 1, 60000) == T0 + 60000
    assert next_due(T0 + 59999, 60000) == T0 + 60000
    assert next_due(T0 + 60000, 60000) == T0 + 120000, "strictly after now"


def test_every_quarter_hour_is_included():
    # 7-minute interval: 19:21, 19:28, 19:35 (quarter hour!), ...
    due = []
    t = T0
    for _ in range(12):
        t = next_due(t, 7 * 60000)
        due.append(t)
    for q in range(T0 + QUARTER_MS, due[-1], QUARTER_MS):
        assert q in due, q
    # an interval longer than 15 minutes still reads at every quarter hour
    t = T0 + 5000
    hours = [next_due(t, 3600000)]
    assert hours[0] == T0 + QUARTER_MS


def test_fractional_intervals_for_tests():
    assert next_due(T0 + 10, 50) == T0 + 50
    assert next_due(T0 + 49, 50) == T0 + 50


def test_record_field_reads_our_own_payload():
    body = b'OCMF|{"FV":"1.0","GS":"dev-1","MS":"20241234","RD":[]}|{"SA":"x"}'
    assert record_field(body, "MS") == "20241234"
    assert record_field(body, "GS") == "dev-1"
    assert record_field(body, "XX") is None
    assert record_field(b'{"MS":""}', "MS") == ""
