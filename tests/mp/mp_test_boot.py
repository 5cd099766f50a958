"""firmware/main.py boot() under MicroPython: what happens before the main loop starts.

Compiling protocol/p256.py from source needs more heap for a moment than the device has
(on the device it is a .mpy; see firmware/README.md), hence the larger heap here.
"""
# mp-heapsize: 200K


def test_boot_switches_the_rng_source_on_before_making_a_key():
    """A device configured from a file (no provisioning) makes its key at boot: on the
    ESP32 the radio must be on first (hal.entropy_ready), or os.urandom is not random."""
    import json
    import os

    from firmware.hal.unix import Hal
    from firmware.main import boot

    calls = []

    class Recording(Hal):
        def entropy_ready(self):
            calls.append("entropy")
            return True

        def store_key(self, secret):
            calls.append("store")
            Hal.store_key(self, secret)

    path = "/tmp/mp_boot_%d" % int.from_bytes(os.urandom(4), "big")
    hal = Recording(path)
    try:
        with open(hal.config_path, "w") as f:
            f.write(json.dumps({"device_id": "b1", "community": "c1"}))
        device = boot(hal)
        assert device.secret is not None and len(device.secret) == 32
        assert calls == ["entropy", "store"], calls
        assert boot(hal).secret == device.secret, "kept at the next boot"
        assert calls == ["entropy", "store"], calls
    finally:
        for name in os.listdir(path):
            os.remove(path + "/" + name)
        os.rmdir(path)
