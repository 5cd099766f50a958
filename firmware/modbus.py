"""Modbus RTU master for the meter link (function codes 03 and 04 only).

Why our own code: micropython-lib has no maintained RTU master that fits. The ones around
either pull in a whole client/server stack (too big for a 100K heap next to TLS and P-256),
decode with floats (ESP32 MicroPython floats are single precision: energy must stay integer),
or swallow line errors. A meter gateway needs the opposite: every way a reply can go wrong is
told apart (one ModbusError subclass and one counter each), counted for the status message,
and never crashes the main loop. Reading two register blocks per minute needs about 200
lines, so here they are.

Framing, timing and retries follow the Modbus over serial line spec (V1.02); each rule is
noted beside the code that keeps it. The UART is anything with the interface of
firmware/hal/uart.py.
"""
try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:  # CPython: tools and tests drive the same master
    # The fallbacks are bound by assignment, not `def`: a def of the same name would become
    # the declared type, and the type check would then judge MicroPython's own functions
    # against it instead of the other way round.
    from time import monotonic as _monotonic  # pyright: ignore[reportAttributeAccessIssue] -- this branch runs only on CPython, whose time has monotonic(); MicroPython took the import above
    from time import sleep as _sleep

    def _cpython_ticks_ms():
        return int(_monotonic() * 1000)

    def _cpython_ticks_diff(a, b):
        return a - b

    def _cpython_sleep_ms(ms):
        _sleep(ms / 1000)

    ticks_ms = _cpython_ticks_ms
    ticks_diff = _cpython_ticks_diff
    sleep_ms = _cpython_sleep_ms


READ_HOLDING = 3
READ_INPUT = 4
MAX_REGISTERS = 125          # per request (spec: 125 for 03/04)
MAX_ADU = 256                # an RTU frame is never longer


# Errors, each counted under its own key of Master.counters:
#   Timeout            no reply at all                                 timeouts
#   CrcError           a reply of the right shape with a bad CRC       crc_errors
#   FrameError         short or overlong frame, wrong unit echoed,
#                      wrong function echoed, wrong byte count         frame_errors
#   ExceptionResponse  the meter answered with exception code .code   exceptions
#   LinkError          the UART/socket itself failed (OSError)         link_errors
# Each failed attempt counts once under its kind, so `errors()` (the sum of the five) is what
# the status reports as modbus_errors.
class ModbusError(Exception):
    counter = "errors"


class Timeout(ModbusError):
    counter = "timeouts"


class CrcError(ModbusError):
    counter = "crc_errors"


class FrameError(ModbusError):
    counter = "frame_errors"


class LinkError(ModbusError):
    counter = "link_errors"


EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ExceptionResponse(ModbusError):
    counter = "exceptions"

    def __init__(self, code, function=0):
        self.code = code
        self.function = function
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception {code} ({name}) to function {function}")


ModbusException = ExceptionResponse

ERROR_COUNTERS = ("timeouts", "crc_errors", "frame_errors", "exceptions", "link_errors")


# CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), low byte first on the wire; one nibble
# at a time: two lookups per byte, 16 small ints of RAM.
_CRC_NIBBLE = (
    0x0000, 0xCC01, 0xD801, 0x1400, 0xF001, 0x3C00, 0x2800, 0xE401,
    0xA001, 0x6C00, 0x7800, 0xB401, 0x5000, 0x9C01, 0x8801, 0x4400,
)


def crc16(data, start=0, end=None):
    """CRC-16/MODBUS of data[start:end]. Over a frame including its CRC the result is 0."""
    table = _CRC_NIBBLE
    crc = 0xFFFF
    if end is None:
        end = len(data)
    for i in range(start, end):
        b = data[i]
        crc = (crc >> 4) ^ table[(crc ^ b) & 0x0F]
        crc = (crc >> 4) ^ table[(crc ^ (b >> 4)) & 0x0F]
    return crc


def build_request(unit, function, address, count):
    """The 8-byte RTU request. Bad arguments are programming errors: ValueError."""
    if not 1 <= unit <= 247:
        raise ValueError("unit must be 1..247")
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError("only function codes 3 and 4")
    if not 1 <= count <= MAX_REGISTERS or not 0 <= address or address + count > 0x10000:
        raise ValueError("bad register range")
    frame = bytearray((unit, function, address >> 8, address & 0xFF, count >> 8, count & 0xFF))
    crc = crc16(frame)
    frame.append(crc & 0xFF)
    frame.append(crc >> 8)
    return bytes(frame)


def find_frame(buf, unit, function, count, start=0):
    """(start, length) of the first valid reply to (unit, function, count) in buf, or None.

    A reply is valid when unit and function (or function | 0x80 for an exception) match,
    the byte count matches the request, and the CRC over the whole frame is good.
    Offsets before `start` are not searched.
    """
    n = len(buf)
    normal = 5 + 2 * count
    exc = function | 0x80
    for i in range(start, n - 4):
        if buf[i] != unit:
            continue
        f = buf[i + 1]
        if f == function:
            length = normal
            if i + length > n or buf[i + 2] != 2 * count:
                continue
        elif f == exc:
            length = 5
        else:
            continue
        if crc16(buf, i, i + length) == 0:
            return i, length
    return None


def diagnose(buf, unit, function, count):
    """The error for a reply that holds no valid frame (raised by the caller)."""
    n = len(buf)
    if n == 0:
        return Timeout(f"no reply from unit {unit}")
    if n < 5:
        return FrameError(f"short frame: {n} bytes")
    if n > MAX_ADU:
        return FrameError(f"overlong reply: {n} bytes")
    if buf[0] != unit:
        return FrameError(f"reply from unit {buf[0]}, expected {unit}")
    f = buf[1]
    if f == function | 0x80:
        return CrcError("CRC mismatch in exception reply")
    if f != function:
        return FrameError(f"reply to function {f}, expected {function}")
    if buf[2] != 2 * count:
        return FrameError(f"byte count {buf[2]}, expected {2 * count}")
    if n < 5 + 2 * count:
        return FrameError(f"short frame: {n} of {5 + 2 * count} bytes")
    return CrcError("CRC mismatch")


def parse_response(buf, unit, function, count):
    """Register bytes (2 * count, big-endian words) of the reply in buf, else a ModbusError.

    Used on a complete reception; leading noise before a valid frame is skipped.
    """
    found = find_frame(buf, unit, function, count)
    if found is None:
        raise diagnose(buf, unit, function, count)
    start, length = found
    if buf[start + 1] & 0x80:
        raise ExceptionResponse(buf[start + 2], function)
    return bytes(buf[start + 3:start + length - 2])


# Spec 2.5.1.1: 3.5 character times of silence before each request, fixed above 19200 baud.
def t35_us(baudrate):
    """Inter-frame silence: 3.5 characters of 11 bits; 1750 us above 19200 baud."""
    if baudrate > 19200:
        return 1750
    return (38500000 + baudrate - 1) // baudrate


# Besides the error counters: requests (reads asked for), ok, failed (reads that raised after
# all retries), retries, resyncs (a valid frame after noise), stale_bytes (discarded before a
# request).
def new_counters():
    return {"requests": 0, "ok": 0, "failed": 0, "retries": 0, "timeouts": 0,
            "crc_errors": 0, "frame_errors": 0, "exceptions": 0, "link_errors": 0,
            "resyncs": 0, "stale_bytes": 0}


class Master:
    """One RTU master on one link. Not thread-safe (one request at a time, as on a bus)."""

    def __init__(self, uart, timeout_ms=500, retries=2, gap_ms=20):
        self.uart = uart
        self.timeout_ms = timeout_ms
        self.retries = retries
        silence_ms = (t35_us(uart.baudrate) + 999) // 1000
        self.silence_ms = silence_ms
        self.gap_ms = max(gap_ms, silence_ms)
        self.counters = new_counters()
        self._last = None            # last bus activity; None: the first request need not wait

    def errors(self):
        c = self.counters
        return sum(c[k] for k in ERROR_COUNTERS)

    def read_holding(self, unit, address, count):
        return self.read(unit, READ_HOLDING, address, count)

    def read_input(self, unit, address, count):
        return self.read(unit, READ_INPUT, address, count)

    # Line errors (timeout, CRC, framing, link) are retried; an exception response is the
    # meter's considered answer and is not.
    def read(self, unit, function, address, count):
        """Register bytes (2 * count, big-endian words). Raises a ModbusError subclass."""
        request = build_request(unit, function, address, count)
        c = self.counters
        c["requests"] += 1
        attempt = 0
        while True:
            try:
                data = self._transaction(request, unit, function, count)
            except ExceptionResponse:
                c["exceptions"] += 1
                c["failed"] += 1
                raise
            except ModbusError as e:
                c[e.counter] += 1
                if attempt >= self.retries:
                    c["failed"] += 1
                    raise
                attempt += 1
                c["retries"] += 1
                continue
            c["ok"] += 1
            return data

    def _transaction(self, request, unit, function, count):
        uart = self.uart
        try:
            self._discard_input()
            if self._last is not None:
                wait = self.silence_ms - ticks_diff(ticks_ms(), self._last)
                if wait > 0:
                    sleep_ms(wait)
            uart.write(request)
            self._last = ticks_ms()
            buf = self._receive(unit, function, count)
        except OSError as e:
            raise LinkError(f"link: {e!r}") from None
        return parse_response(buf, unit, function, count)

    # Bytes left on the line before a request (a late reply to a timed-out request, noise)
    # are discarded and counted, so a late reply is never taken for the next answer.
    def _discard_input(self):
        uart = self.uart
        for _ in range(64):          # bounded: a babbling line must not hang us
            junk = uart.read(MAX_ADU)
            if not junk:
                return
            self.counters["stale_bytes"] += len(junk)
            self._last = ticks_ms()

    # The first byte must come within timeout_ms; then the frame is finished when the
    # expected length has arrived with a good CRC, or when the line has been silent for
    # gap_ms (at least t3.5, by default 20 ms: USB adapters, ptys and TCP deliver one frame
    # in several chunks). A valid frame after noise (e.g. a glitch when the RS-485 driver
    # turns round) is accepted, the CRC proves it, and counted as a resync.
    def _receive(self, unit, function, count):
        uart = self.uart
        buf = bytearray()
        start = ticks_ms()
        # A line that never goes quiet must still end the transaction.
        hard_limit = 2 * self.timeout_ms + 50
        while True:
            elapsed = ticks_diff(ticks_ms(), start)
            if not buf:
                left = self.timeout_ms - elapsed
                if left <= 0 or not uart.wait_readable(left):
                    return buf
            elif elapsed > hard_limit or not uart.wait_readable(self.gap_ms):
                return buf
            chunk = uart.read(MAX_ADU)
            if not chunk:
                continue
            # A frame that is valid now ends in this chunk: search only where it can start,
            # so a babbling line costs linear, not quadratic, time.
            search_from = max(0, len(buf) - 5 - 2 * count)
            buf.extend(chunk)
            self._last = ticks_ms()
            found = find_frame(buf, unit, function, count, search_from)
            if found is not None:
                if found[0]:
                    self.counters["resyncs"] += 1
                return buf
            if len(buf) > MAX_ADU:
                return buf
