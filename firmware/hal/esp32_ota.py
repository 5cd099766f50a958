"""ESP32 HAL: over-the-air update of MicroPython itself, through esp32.Partition.

The application (the .mpy files) is updated by firmware/ota.py into A/B directories on the
file system. MicroPython itself lives in the ESP32's OTA app partitions (ota_0 / ota_1, on
boards flashed with an OTA partition table) and has its own A/B switch in the ESP-IDF
bootloader: it boots a new image once and rolls back on the next reset unless the image
calls `mark_app_valid_cancel_rollback()`. This module is that path behind the HAL, so
nothing else in firmware/ touches esp32.Partition. `confirm()` is called when the
application confirms itself (firmware/app.py), so one rule decides for both layers.

It can only run on an ESP32; tests/tools/test_fidelity.py type-checks it against the ESP32
stubs, so its calls match the port's API.
"""
import hashlib

import esp32

BLOCK = 4096


class PartitionError(Exception):
    pass


def _running():
    # The stubs declare `id: str`, but the port also takes the RUNNING/BOOT constants
    # (MicroPython docs, esp32.Partition); this is the documented way to find the running
    # image.
    return esp32.Partition(esp32.Partition.RUNNING)  # pyright: ignore[reportArgumentType] -- stub says str, port takes RUNNING (int) too


# The partition running now, for the status message.
def running_label():
    return _running().info()[4]


def confirm():
    """Keep the running MicroPython image (cancel the bootloader's rollback)."""
    try:
        esp32.Partition.mark_app_valid_cancel_rollback()
    except OSError:
        pass          # image without rollback support (OSError -261): nothing to confirm


# Streams an image into the next update partition block by block (BLOCK bytes, erased and
# written by writeblocks), checks its SHA-256 at the end against the one the signed manifest
# gives; finish() makes it the boot partition.
class PartitionWriter:
    """Write a MicroPython image of `size` bytes into the next OTA partition."""

    def __init__(self, size, sha256_hex):
        self.part = _running().get_next_update()
        capacity = self.part.info()[3]
        if size > capacity:
            raise PartitionError("image of %d bytes does not fit the %d-byte partition"
                                 % (size, capacity))
        self.size = size
        self.expected = sha256_hex
        self.written = 0
        self.block = 0
        self.buf = bytearray()
        self.hash = hashlib.sha256()

    def write(self, data):
        if self.written + len(self.buf) + len(data) > self.size:
            raise PartitionError("image longer than announced")
        self.hash.update(data)
        self.buf.extend(data)
        while len(self.buf) >= BLOCK:
            self._flush(self.buf[:BLOCK])
            self.buf = self.buf[BLOCK:]

    def _flush(self, block):
        if len(block) < BLOCK:
            block = bytes(block) + b"\xff" * (BLOCK - len(block))
        self.part.writeblocks(self.block, bytes(block))
        self.block += 1
        self.written += BLOCK

    def finish(self):
        """Check the image and make it the one the bootloader starts next."""
        if self.buf:
            n = len(self.buf)
            self._flush(self.buf)
            self.written -= BLOCK - n
            self.buf = bytearray()
        if self.written != self.size:
            raise PartitionError("image has %d bytes, %d announced" % (self.written, self.size))
        digest = "".join("%02x" % b for b in self.hash.digest())
        if digest != self.expected:
            raise PartitionError("image sha256 does not match the manifest")
        self.part.set_boot()
