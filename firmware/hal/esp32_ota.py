"""ESP32 HAL: over-the-air update of MicroPython itself, through esp32.Partition.

The application (the .mpy files) is updated by firmware/ota.py into A/B directories on
the file system. MicroPython itself lives in the ESP32's OTA app partitions (ota_0 /
ota_1, on boards flashed with an OTA partition table) and has its own A/B switch in the
ESP-IDF bootloader: write the image into the partition after the running one, set it as
the boot partition, reset; the bootloader boots it once and rolls back on the next reset
unless the new image calls `mark_app_valid_cancel_rollback()`.

This module is that path behind the HAL, so nothing else in firmware/ touches
esp32.Partition:
- `PartitionWriter(size)` streams an image into the next update partition, block by
  block (4096 bytes, erased and written by writeblocks), checking its SHA-256 at the end
  against the one the signed manifest gives; `finish()` makes it the boot partition.
- `confirm()` marks the running image valid; firmware/ota.py calls it when the
  application confirms itself (first signed reading after an update), so one rule decides
  for both layers. On images without rollback support the call raises OSError(-261),
  which is not an error for us.
- `running_label()` names the partition running now, for the status message.

It can only run on an ESP32; tests/test_fidelity.py type-checks it against the ESP32
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


def running_label():
    return _running().info()[4]


def confirm():
    """Keep the running MicroPython image (cancel the bootloader's rollback)."""
    try:
        esp32.Partition.mark_app_valid_cancel_rollback()
    except OSError:
        pass          # image without rollback support: nothing to confirm


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
