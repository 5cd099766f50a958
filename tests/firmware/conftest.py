"""Firmware fixtures: the emulated meter, the real firmware under the MicroPython unix port
(device_factory), an MQTT subscriber, and the Modbus probe run by MicroPython (mp_probe)."""
from tests.firmware.fixtures import device_factory, meter, subscriber
from tests.firmware.modbus_fixtures import mp_probe
