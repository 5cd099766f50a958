"""Which source files go on the device: the one list.

The release tool compiles and signs exactly these (tools/release.py, through
tools/fidelity.device_modules, which type-checks and cross-compiles the same files for the
ESP32) and the emulator packs exactly these into its ROMFS image (sim/device.py). An ESP32
gets the "esp32" files, the unix port (tests, `egs-sim device`) the "unix" ones.

Why here: tools/ and sim/ both import it, and it belongs with the firmware it lists (the
gateway never needs it, and `tools` is not installed with egs-gw). Plain data, importable
under MicroPython too; not itself shipped (NOT_ON_DEVICE). Every .py file under firmware/
and protocol/ is in exactly one of the lists below (tests/tools/test_fidelity.py checks),
so a new module cannot be forgotten on the device or shipped by accident.
"""
COMMON = (
    "firmware/__init__.py",
    "firmware/app.py",
    "firmware/boot_select.py",
    "firmware/config.py",
    "firmware/flashlog.py",
    "firmware/hal/__init__.py",
    "firmware/hal/tls.py",
    "firmware/hal/uart.py",
    "firmware/heap.py",
    "firmware/main.py",
    "firmware/meters.py",
    "firmware/modbus.py",
    "firmware/mqtt.py",
    "firmware/ota.py",
    "firmware/provision.py",
    "firmware/sequence.py",
    "firmware/version.py",
    # the device side of the wire contract
    "protocol/__init__.py",
    "protocol/bundle.py",
    "protocol/console.py",
    "protocol/messages.py",
    "protocol/offer.py",
    "protocol/ocmf.py",
    "protocol/p256.py",
    "protocol/topics.py",
)
PORT_FILES = {
    "esp32": ("firmware/hal/esp32.py", "firmware/hal/esp32_ota.py",
              "firmware/hal/esp32_uart.py"),
    "unix": ("firmware/hal/unix.py", "firmware/hal/unix_uart.py"),
}
# under firmware/ or protocol/ but never on a device
NOT_ON_DEVICE = (
    "firmware/manifest.py",       # this list
    "protocol/messages_gateway.py",   # the gateway's half of the messages
    "protocol/ocmf_verify.py",    # the gateway's half of OCMF
)


def files(port="esp32"):
    """Repository-relative paths of the .py files a device of `port` runs, sorted."""
    if port not in PORT_FILES:
        raise ValueError("unknown port %r; known: esp32, unix" % (port,))
    return sorted(COMMON + PORT_FILES[port])
