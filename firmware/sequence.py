"""The device's reading sequence (OCMF "PG": F1, F2, ...): never reused, without gaps.

Two stores, because each alone fails one way:
- The flash log is the primary record. A reading leaves the device only after its record
  (which carries the sequence) is flushed to the log, so after any power cut
  `max(newest record, gateway ack) + 1` is a number nobody outside has seen. A record torn
  by the cut was never published, so taking its number again reuses nothing. Deriving the
  counter from the log also leaves no gap: the gateway acknowledges only the highest
  *contiguous* sequence, so a skipped number would stall its acks forever.
- A counter in the HAL's key store (NVS on the ESP32, a file on unix) guards against losing
  the filesystem (reformatted, corrupted beyond reading). Before a number is used it must
  lie within a reserved block whose upper end is persisted there; blocks of 64 keep NVS
  writes rare. Only when the log is new (`FlashLog.fresh`) does counting restart above the
  reserved block: a wiped log then costs a gap, never a reused number.
"""
BLOCK = 64
KEY = "seq_reserved"


class Sequence:
    def __init__(self, log, hal):
        self._hal = hal
        self.reserved = hal.get_counter(KEY)
        if log.fresh:
            self.next = self.reserved + 1
        else:
            self.next = max(log.last_seq or 0, log.acked) + 1

    def claim(self):
        """The number for the next reading; persisted as reserved before it is returned."""
        n = self.next
        if n > self.reserved:
            self._hal.set_counter(KEY, n + BLOCK - 1)
            self.reserved = n + BLOCK - 1
        return n

    def used(self, n):
        """The record with number n is in the log: the next reading gets n + 1."""
        if n >= self.next:
            self.next = n + 1
