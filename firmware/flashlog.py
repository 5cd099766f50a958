"""Flash store-and-forward log of signed readings: append-only, power-cut safe, bounded.

Why segment files and not one ring file: on the ESP32 the filesystem is LittleFS, where an
append is cheap and atomic per flush, but rewriting the middle of a file copies the rest of
it. So records are only ever appended, to the newest of a few segment files
(`<dir>/00000001.seg`, ...), and space is freed by deleting whole old segments. A record
already written is never written again, so a power cut can only hurt the record being
appended, at the tail of the newest segment. The same code runs on the unix port and on
CPython (tests read a device's log with it).

Record layout (big-endian), header 28 bytes + body:
    magic b"\\xa5R" | u16 body length | u32 seq | u64 import Wh | u64 export Wh |
    u32 CRC-32 over header bytes 2..24 and the body | body (the OCMF record, utf-8)
A segment is read from its start until the first record that is short or fails its CRC:
that is where the file ends for us. Found at the tail of the newest segment at open, it is
a torn append (counted in `torn`) and the segment is sealed: later appends go to a new
segment, so garbage never sits between good records.

State outside the segments, in `<dir>/state.json` ({"acked": n, "dropped": n}), written
to state.tmp and renamed over (atomic on POSIX and LittleFS): `acked` is the highest
sequence the gateway said it has durably stored (`.../ack`), never the broker's PUBACK.
Records up to `acked` are dead; a segment is deleted once all its records are dead,
except the newest segment, so the last sequence and registers written are always known.

Durability: append() flushes before it returns; on LittleFS (ESP32) a flush commits the
file, so the record survives a power cut. On the unix port a flush reaches the kernel, which
survives the process being killed (the tests' power cut); MicroPython there has no fsync.

Bound: at most `max_bytes` in segments of `max_bytes // segments` bytes. When an append
would exceed it, the oldest segment is deleted even if not acknowledged: its live records
are counted in `dropped` (persisted). 512 KB holds about 1,000 records of ~480 bytes,
more than the 672 of seven days at 15-minute readings (15 of 16 segments always full).
"""
import binascii
import json
import os
import struct

MAGIC = b"\xa5R"
HEADER = ">2sHIQQI"
HEADER_SIZE = 28
MAX_BODY = 4096
DEFAULT_MAX_BYTES = 512 * 1024
DEFAULT_SEGMENTS = 16

_crc32 = binascii.crc32            # in every port we use (ESP32, unix) and CPython


class LogError(Exception):
    pass


def _crc(header, body):
    return _crc32(body, _crc32(memoryview(header)[2:24])) & 0xFFFFFFFF


def encode(seq, import_wh, export_wh, body):
    """Header + body bytes of one record."""
    if not 0 < len(body) <= MAX_BODY:
        raise LogError("record body of %d bytes" % len(body))
    header = bytearray(struct.pack(HEADER, MAGIC, len(body), seq, import_wh, export_wh, 0))
    struct.pack_into(">I", header, 24, _crc(header, body))
    return header, body


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _size(path):
    return os.stat(path)[6]


class _Segment:
    """What the log knows about one segment file without reading it again."""

    def __init__(self, number):
        self.number = number
        self.first = None      # first sequence (None: no valid record)
        self.last = None
        self.count = 0
        self.end = 0           # offset after the last valid record
        self.size = 0          # file size (may include a torn tail)
        self.sealed = False    # a torn tail: never appended to again
        self.regs = (0, 0)     # (import_wh, export_wh) of the last record

    def took(self, seq, regs, n):
        """A record of n bytes with this sequence and registers is now in the segment."""
        if self.first is None:
            self.first = seq
        self.last = seq
        self.count += 1
        self.end += n
        self.regs = regs


class FlashLog:
    """The device's log. `path` is a directory the HAL provides."""

    def __init__(self, path, max_bytes=DEFAULT_MAX_BYTES, segments=DEFAULT_SEGMENTS):
        if segments < 2 or max_bytes // segments < 256:
            raise LogError("log too small: %d bytes in %d segments" % (max_bytes, segments))
        self.path = path.rstrip("/")
        self.max_bytes = max_bytes
        self.segment_bytes = max_bytes // segments
        self.acked = 0
        self.dropped = 0
        self.torn = 0            # torn or damaged tails found (this boot)
        self.fresh = False       # no state and no segment found: a new (or wiped) log
        self.last_seq = None     # newest record written
        self.last_regs = None    # its (import_wh, export_wh)
        self._segs = []
        self._cursor = None      # (segment number, offset, seq of the record before offset)
        self._open()

    # ------------------------------------------------------------------ opening
    def _file(self, number):
        return "%s/%08d.seg" % (self.path, number)

    def _open(self):
        try:
            os.mkdir(self.path)
        except OSError:
            pass
        had_state = self._load_state()
        numbers = []
        for name in os.listdir(self.path):
            if name.endswith(".seg") and len(name) == 12:
                try:
                    numbers.append(int(name[:8]))
                except ValueError:
                    pass
        numbers.sort()
        for number in numbers:
            seg = _Segment(number)
            self._scan(seg)
            self._segs.append(seg)
        for seg in self._segs:
            if seg.end < seg.size:
                self.torn += 1
                seg.sealed = True
            if seg.last is not None:
                self.last_seq = seg.last
                self.last_regs = seg.regs
        if self.last_seq is not None and self.acked > self.last_seq:
            self.acked = self.last_seq
        if not had_state and not self._segs:
            self.fresh = True
            self._save_state()

    def _load_state(self):
        for name in ("state.json", "state.tmp"):
            try:
                with open(self.path + "/" + name) as f:
                    state = json.loads(f.read())
                acked = state["acked"]
                dropped = state["dropped"]
                if isinstance(acked, int) and isinstance(dropped, int) and acked >= 0 \
                        and dropped >= 0:
                    self.acked = acked
                    self.dropped = dropped
                    return True
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return False

    def _save_state(self):
        tmp = self.path + "/state.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"acked": self.acked, "dropped": self.dropped}))
        os.rename(tmp, self.path + "/state.json")

    def _read(self, f):
        """The record at the file position: (seq, imp, exp, body) or None (end or damage)."""
        header = f.read(HEADER_SIZE)
        if not header or len(header) < HEADER_SIZE:
            return None
        magic, length, seq, imp, exp, crc = struct.unpack(HEADER, header)
        if magic != MAGIC or not 0 < length <= MAX_BODY:
            return None
        body = f.read(length)
        if not body or len(body) < length or _crc(header, body) != crc:
            return None
        return seq, imp, exp, body

    def _open_seg(self, seg):
        try:
            return open(self._file(seg.number), "rb")
        except OSError:
            return None

    def _scan(self, seg):
        seg.size = _size(self._file(seg.number))
        f = self._open_seg(seg)
        if f is None:
            return
        with f:
            while True:
                rec = self._read(f)
                if rec is None or (seg.last is not None and rec[0] <= seg.last):
                    break      # a sequence going back only happens if the file was altered
                seg.took(rec[0], (rec[1], rec[2]), HEADER_SIZE + len(rec[3]))

    # ------------------------------------------------------------------ queries
    def bytes_used(self):
        return sum(s.size for s in self._segs)

    def depth(self):
        """Records written and not yet acknowledged by the gateway."""
        n = 0
        for s in self._segs:
            if s.last is None or s.last <= self.acked:
                continue
            n += s.count if s.first > self.acked else s.last - self.acked
        return n

    def oldest_live(self):
        """Sequence of the oldest record not acknowledged, or None."""
        for s in self._segs:
            if s.last is not None and s.last > self.acked:
                return max(s.first, self.acked + 1)
        return None

    def next_after(self, seq):
        """(seq, body) of the oldest live record with a sequence above `seq`, or None."""
        floor = max(seq, self.acked)
        cur = self._cursor
        for s in self._segs:
            if s.last is None or s.last <= floor:
                continue
            offset = 0
            if cur is not None and cur[0] == s.number and cur[2] <= floor:
                offset = cur[1]
            f = self._open_seg(s)
            if f is None:
                continue
            with f:
                f.seek(offset)
                while offset < s.end:
                    rec = self._read(f)
                    if rec is None:
                        break
                    offset += HEADER_SIZE + len(rec[3])
                    self._cursor = (s.number, offset, rec[0])
                    if rec[0] > floor:
                        return rec[0], rec[3]
            self._cursor = None
        return None

    def newest(self):
        """(seq, body) of the newest record, acknowledged or not, or None."""
        for s in reversed(self._segs):
            if s.last is None:
                continue
            f = self._open_seg(s)
            if f is None:
                return None
            rec = None
            with f:
                while f.tell() < s.end:
                    got = self._read(f)
                    if got is None:
                        break
                    rec = got
            return (rec[0], rec[3]) if rec else None
        return None

    def records(self):
        """Every valid record, oldest first: [(seq, import_wh, export_wh, body)]. For tools."""
        out = []
        for s in self._segs:
            f = self._open_seg(s)
            if f is None:
                continue
            with f:
                while f.tell() < s.end:
                    rec = self._read(f)
                    if rec is None:
                        break
                    out.append(rec)
        return out

    # ------------------------------------------------------------------ changes
    def append(self, seq, import_wh, export_wh, body):
        """Write one record; durable (flushed) when this returns."""
        if isinstance(body, str):
            body = body.encode()
        if self.last_seq is not None and seq <= self.last_seq:
            raise LogError("sequence %d not above the last one written (%d)"
                           % (seq, self.last_seq))
        header, body = encode(seq, import_wh, export_wh, body)
        n = HEADER_SIZE + len(body)
        seg = self._segs[-1] if self._segs else None
        if seg is None or seg.sealed or (seg.count and seg.size + n > self.segment_bytes):
            seg = _Segment(self._segs[-1].number + 1 if self._segs else 1)
            self._segs.append(seg)
        while self.bytes_used() + n > self.max_bytes and len(self._segs) > 1:
            self._drop_oldest()
        path = self._file(seg.number)
        try:
            with open(path, "ab") as f:
                done = f.write(header + body)
                f.flush()
            if done is not None and done != n:
                raise OSError(28, "flash log: %d of %d bytes written" % (done, n))
        except OSError:
            # Cut short (flash full, I/O error): part of the record may sit at the end
            # of the segment. Seal it, so no later record is written behind the fragment,
            # where a reader stops (the record would be lost and its number reused).
            seg.sealed = True
            try:
                seg.size = _size(path)
            except OSError:
                pass
            raise
        seg.size += n
        seg.took(seq, (import_wh, export_wh), n)
        self.last_seq = seq
        self.last_regs = (import_wh, export_wh)

    def _drop_oldest(self):
        s = self._segs[0]
        lost = 0
        if s.last is not None and s.last > self.acked:
            lost = s.count if s.first > self.acked else s.last - self.acked
        if lost:
            self.dropped += lost
            self._save_state()
        self._remove(s)

    def _remove(self, s):
        try:
            os.remove(self._file(s.number))
        except OSError:
            pass
        self._segs.remove(s)
        if self._cursor is not None and self._cursor[0] == s.number:
            self._cursor = None

    def ack(self, seq):
        """The gateway has stored everything up to `seq`. True when that was news.

        An ack above the newest record is clamped to it (a confused or hostile gateway
        must not make the device forget records it has not written yet).
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq <= self.acked:
            return False
        if self.last_seq is None:
            return False
        seq = min(seq, self.last_seq)
        if seq <= self.acked:
            return False
        self.acked = seq
        self._save_state()
        for s in self._segs[:-1]:
            if s.last is None or s.last <= self.acked:
                self._remove(s)
        return True

    def stats(self):
        return {"depth": self.depth(), "acked": self.acked, "last_seq": self.last_seq,
                "dropped": self.dropped, "torn": self.torn, "bytes": self.bytes_used(),
                "segments": len(self._segs)}
