"""Options and the shared bench of the hardware-in-the-loop suite (docs/hil.md).

    pytest hil_tests                                   # emulator (the default, in `make test`)
    pytest hil_tests --target esp32 --port /dev/ttyUSB0 [--meter-port /dev/ttyUSB1]
           [--charger-id CP-7 --ocpp 192.168.1.10:9000] [--broker 192.168.1.10:1883]
           [--wifi-ssid S --wifi-password P]

One bench (broker, Anvil, gateway with the central system, meter, device, charger) serves
the whole session: the tests leave it as they found it (a stopped broker is started
again, a silenced meter reconnected) and it is stopped at the end even after failures.
"""
import pytest

from hil_tests.targets import Bench


def pytest_addoption(parser):
    g = parser.getgroup("hil", "hardware-in-the-loop suite (hil_tests/)")
    g.addoption("--target", choices=("sim", "esp32"), default="sim",
                help="sim: the firmware under MicroPython with emulators (default); "
                     "esp32: a real board on --port")
    g.addoption("--port", default=None,
                help="esp32: the board's serial console (e.g. /dev/ttyUSB0)")
    g.addoption("--meter-port", default=None,
                help="esp32: USB RS-485 adapter on the meter bus, driven by the meter "
                     "emulator; without it a real meter is on the bus")
    g.addoption("--meter-model", default=None,
                help="meter model the device is provisioned for (default sdm630; "
                     "sdm120, sdm72, abb_b23, ddsu666)")
    g.addoption("--reading-interval", type=float, default=None,
                help="firmware reading interval in seconds during the suite (default 1)")
    g.addoption("--charger-id", default=None,
                help="a real charger's chargeBoxId, configured with the central system's URL; "
                     "without it the charge point emulator is used")
    g.addoption("--charger-password", default=None,
                help="Basic auth password the real charger is configured with")
    g.addoption("--broker", default=None,
                help="HOST:PORT the broker listens on and the device connects to "
                     "(esp32: this machine's address on the board's Wi-Fi); "
                     "default 127.0.0.1 on a free port")
    g.addoption("--ocpp", default=None,
                help="HOST:PORT the central system listens on (a real charger's URL is "
                     "ws://HOST:PORT/ocpp/<charger-id>); default 127.0.0.1 on a free port")
    g.addoption("--device-id", default=None, help="device id to provision (default per target)")
    g.addoption("--wifi-ssid", default=None, help="esp32: Wi-Fi network for the board")
    g.addoption("--wifi-password", default=None, help="esp32: Wi-Fi password")


def _opts(config):
    names = ("target", "port", "meter_port", "meter_model", "reading_interval", "charger_id",
             "charger_password", "broker", "ocpp", "device_id",
             "wifi_ssid", "wifi_password")
    return {n: config.getoption(n) for n in names}


def pytest_configure(config):
    opts = _opts(config)
    if opts["target"] == "esp32" and not opts["port"]:
        raise pytest.UsageError("--target esp32 needs --port (the board's serial console)")
    for name in ("broker", "ocpp"):
        if opts[name] is not None:
            check_address(name, opts[name])
    interval = opts["reading_interval"]
    if interval is not None and not 0.01 <= interval <= 86400:      # also refuses nan
        raise pytest.UsageError(f"--reading-interval must be 0.01 to 86400 seconds, not {interval}")


def check_address(name, value):
    """--broker / --ocpp: [HOST]:PORT, PORT 0-65535 (0: a free one; HOST: 127.0.0.1)."""
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise pytest.UsageError(f"--{name} must be HOST:PORT with a port 0-65535, not {value!r}")


# Cheap checks first; the ledger tests last, since they wait for the device's quarter hour.
ORDER = ("test_provisioning", "test_tampered", "test_meter_fault", "test_power_cycle",
         "test_outage", "test_ledger", "test_charging")


def _rank(item):
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    return ORDER.index(name) if name in ORDER else len(ORDER)


def pytest_collection_modifyitems(config, items):
    """Run the suite in ORDER; on hardware allow for a real 15-minute interval."""
    hil = [i for i in items if "hil_tests" in str(i.fspath)]
    if hil:
        first = items.index(hil[0])
        rest = [i for i in items if i not in hil]
        items[:] = rest[:first] + sorted(hil, key=_rank) + rest[first:]
    if config.getoption("target") == "esp32":
        for item in items:
            if item.fspath and "hil_tests" in str(item.fspath):
                item.add_marker(pytest.mark.timeout(1500))


@pytest.fixture(scope="session")
def bench(request, tmp_path_factory):
    b = Bench(_opts(request.config), tmp_path_factory.mktemp("hil"))
    b.start()
    request.config._hil_bench = b
    try:
        yield b
    finally:
        request.config._hil_bench = None
        b.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    b = getattr(item.config, "_hil_bench", None)
    if report.failed and b is not None and "hil_tests" in str(item.fspath):
        report.sections.append(("bench logs", b.log_tails()))
