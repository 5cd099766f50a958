"""A small MQTT 3.1.1 client for the meter device: QoS 0/1 publish, subscribe, keepalive.

Why our own and not micropython-lib's umqtt.simple / umqtt.robust:
- umqtt.simple counts packet ids up from 1 and never wraps at 65,536: after 65,535 QoS 1
  publishes (45 days at one reading a minute plus status messages) it sends an id the
  protocol forbids, and the broker drops the connection.
- its QoS 1 publish blocks until the PUBACK arrives, and it cannot have several messages in
  flight, so replaying a backlog of a thousand readings after an outage takes a thousand
  round trips, and a lost PUBACK hangs the main loop (and trips the watchdog).
- it has no keepalive of its own (ping is up to the caller) and no reconnect policy.
What this client does instead: QoS 1 with up to `max_inflight` messages outstanding, packet
ids 1..65535 wrapping round and skipping ids still in flight (0 is never used), PINGREQ when
idle for half the keepalive, a dead broker detected by a missing PINGRESP or PUBACK,
non-blocking reads polled from the main loop, and an exponential reconnect backoff with
jitter (class Backoff). A retained last will goes into CONNECT.

No persistence here: clean session, and in-flight messages are forgotten on a disconnect.
The flash log (firmware/flashlog.py) is the device's memory: after a reconnect the
application replays everything the gateway has not acknowledged.

The socket comes from the HAL (`connect_fn()` returns a connected socket, TLS-wrapped on the
ESP32). Only read/write/setblocking/close are used, which plain and TLS sockets of every
MicroPython port have. Errors: MQTTError (protocol, refused connection) or OSError
(network); after either the client is disconnected and `last_error` says why.
"""
import select
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms

try:
    from os import urandom
except ImportError:
    from uos import urandom

EAGAIN = (11, 115, 119)        # EAGAIN (and EINPROGRESS/EWOULDBLOCK on lwIP)
ETIMEDOUT = 110

CONNACK_REASONS = {
    1: "unacceptable protocol version", 2: "client identifier rejected",
    3: "server unavailable", 4: "bad user name or password", 5: "not authorized",
}


class MQTTError(Exception):
    pass


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    if len(s) > 65535:
        raise MQTTError("string too long")
    return bytes((len(s) >> 8, len(s) & 0xFF)) + s


def packet(first, body):
    return bytes((first,)) + _varint(len(body)) + body


class Client:
    def __init__(self, client_id, connect_fn, user=None, password=None, keepalive_s=60,
                 will=None, on_message=None, max_inflight=8, timeout_ms=10000,
                 max_packet=1024):
        """will: (topic, payload, retain) sent at QoS 1;
        on_message(topic str, payload bytes, retained bool): retained is True for a message
        the broker kept and hands out on subscribing (not news)."""
        self.client_id = client_id
        self.connect_fn = connect_fn
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.will = will
        self.on_message = on_message
        self.max_inflight = max_inflight
        self.timeout_ms = timeout_ms
        self.max_packet = max_packet
        self.sock = None
        self.inflight = {}       # packet id -> ticks when sent
        self.last_error = None
        self.counters = {"connects": 0, "received": 0, "bad_packets": 0,
                         "oversize": 0, "handler_errors": 0, "sub_refused": 0}
        self._pid = 0
        self._buf = bytearray(max_packet + 64)
        self._n = 0
        self._skip = 0
        self._eof = False
        self._poll = None
        self._last_tx = 0
        self._ping_sent = None

    @property
    def connected(self):
        return self.sock is not None

    # --------------------------------------------------------------- connection
    def connect(self):
        """Open the socket, CONNECT, wait for CONNACK. Raises MQTTError/OSError."""
        self.close()
        sock = self.connect_fn()
        self.sock = sock
        try:
            sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)
            self._n = 0
            self._skip = 0
            self._eof = False
            self._send(self._connect_packet())
            start = ticks_ms()
            while True:
                first, body = self._read_packet_blocking(start)
                if first == 0x20:
                    break
            if len(body) != 2:
                raise MQTTError("malformed CONNACK")
            if body[1]:
                raise MQTTError("connection refused: %s"
                                % CONNACK_REASONS.get(body[1], "code %d" % body[1]))
        except Exception as e:
            self.close(e)
            raise
        self.inflight = {}
        self._ping_sent = None
        self.last_error = None
        self.counters["connects"] += 1

    def _connect_packet(self):
        flags = 0x02                                   # clean session
        payload = _str(self.client_id)
        if self.will:
            topic, message, retain = self.will
            flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        if self.user:
            flags |= 0x80
            payload += _str(self.user)
            if self.password:
                flags |= 0x40
                payload += _str(self.password)
        ka = self.keepalive_s
        body = b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF)) + payload
        return packet(0x10, body)

    def _read_packet_blocking(self, start):
        while True:
            got = self._take_packet()
            if got is not None:
                return got
            left = self.timeout_ms - ticks_diff(ticks_ms(), start)
            if left <= 0:
                raise OSError(ETIMEDOUT, "no CONNACK")
            self.wait(min(left, 100))
            self._fill()

    def close(self, why=None):
        """Drop the connection without DISCONNECT (the broker then sends the will)."""
        if why is not None:
            self.last_error = str(why) or type(why).__name__
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except Exception:  # noqa: BLE001, S110 - closing must not fail; the cause is kept above
                pass
        self._poll = None
        self.inflight = {}
        self._n = 0

    def disconnect(self):
        """A clean DISCONNECT: the broker discards the will."""
        if self.sock is not None:
            try:
                self._send(b"\xe0\x00")
            except OSError:
                pass
        self.close()

    # --------------------------------------------------------------- sending
    def _socket(self):
        sock = self.sock
        if sock is None:
            raise MQTTError("not connected")
        return sock

    def _send(self, data):
        sock = self._socket()
        view = memoryview(data)
        start = ticks_ms()
        while len(view):
            try:
                n = sock.write(view)
            except OSError as e:
                if e.args[0] not in EAGAIN:
                    raise
                n = None
            if n:
                view = view[n:]
                continue
            if ticks_diff(ticks_ms(), start) > self.timeout_ms:
                raise OSError(ETIMEDOUT, "send timed out")
            sleep_ms(5)
        self._last_tx = ticks_ms()

    def _next_pid(self):
        pid = self._pid
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                self._pid = pid
                return pid
        raise MQTTError("no free packet id")

    def can_publish(self):
        return self.sock is not None and len(self.inflight) < self.max_inflight

    def publish(self, topic, payload, qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). Does not wait for PUBACK."""
        if self.sock is None:
            raise MQTTError("not connected")
        if isinstance(payload, str):
            payload = payload.encode()
        body = _str(topic)
        pid = 0
        if qos:
            if len(self.inflight) >= self.max_inflight:
                raise MQTTError("too many messages in flight")
            pid = self._next_pid()
            body += bytes((pid >> 8, pid & 0xFF))
        self._send(packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload))
        if qos:
            self.inflight[pid] = ticks_ms()
        return pid

    def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        body = bytes((pid >> 8, pid & 0xFF)) + _str(topic) + bytes((qos,))
        self._send(packet(0x82, body))
        return pid

    # --------------------------------------------------------------- receiving
    def _fill(self):
        """Read what the socket has into the fixed input buffer (no allocation per byte
        received). Bytes of a packet being skipped are dropped. OSError when the peer
        closed. Returns False when nothing was read."""
        sock = self._socket()
        if self._eof:
            raise OSError(104, "connection closed by broker")
        buf = self._buf
        got = False
        while self._n < len(buf):
            try:
                n = sock.readinto(memoryview(buf)[self._n:])
            except OSError as e:
                if e.args[0] in EAGAIN:
                    return got
                raise
            if n is None:
                return got
            if not n:
                if got:                  # handle what came first (e.g. a refusing CONNACK)
                    self._eof = True
                    return got
                raise OSError(104, "connection closed by broker")
            got = True
            if self._skip:
                drop = min(self._skip, n)
                self._skip -= drop
                buf[self._n:self._n + n - drop] = buf[self._n + drop:self._n + n]
                n -= drop
            self._n += n
            if self._n >= len(buf) - 16:
                return got
        return got

    def _header(self):
        """(remaining length, header size) of the packet at the buffer start, or None."""
        buf = self._buf
        value = 0
        shift = 0
        for i in range(1, min(self._n, 5)):
            b = buf[i]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value, i + 1
            shift += 7
        if self._n >= 5:
            raise MQTTError("malformed remaining length")
        return None

    def _consume(self, total):
        rest = self._n - total
        if rest > 0:
            self._buf[0:rest] = self._buf[total:self._n]
        self._n = max(0, rest)

    def _take_packet(self):
        """(first byte, body bytes) of the next complete packet, or None."""
        while True:
            head = self._header()
            if head is None:
                return None
            length, hsize = head
            total = hsize + length
            if length > self.max_packet:     # e.g. a huge retained message: skip it
                self.counters["oversize"] += 1
                if self._n >= total:
                    self._consume(total)
                else:
                    self._skip = total - self._n
                    self._n = 0
                continue
            if self._n < total:
                return None
            first = self._buf[0]
            body = bytes(self._buf[hsize:total])
            self._consume(total)
            return first, body

    def poll(self):
        """Handle what arrived and keep the connection alive. Never raises: on any error
        the client disconnects and records `last_error`."""
        if self.sock is None:
            return
        try:
            for _ in range(16):           # bounded: a flood must not starve the main loop
                more = self._fill()
                while self.sock is not None:
                    got = self._take_packet()
                    if got is None:
                        break
                    self._handle(got[0], got[1])
                if not more or self.sock is None:
                    break
            self._keepalive()
        except (OSError, MQTTError) as e:
            self.close(e)

    def _keepalive(self):
        if self.sock is None:
            return
        now = ticks_ms()
        if self._ping_sent is not None \
                and ticks_diff(now, self._ping_sent) > self.timeout_ms:
            raise MQTTError("no PINGRESP from broker")
        for sent in self.inflight.values():
            if ticks_diff(now, sent) > self.timeout_ms:
                raise MQTTError("no PUBACK from broker")
        if self.keepalive_s and self._ping_sent is None \
                and ticks_diff(now, self._last_tx) >= self.keepalive_s * 500:
            self._send(b"\xc0\x00")
            self._ping_sent = ticks_ms()

    def _handle(self, first, body):
        kind = first & 0xF0
        if kind == 0x30:
            self._incoming(first, body)
        elif kind == 0x40:                        # PUBACK
            if len(body) == 2:
                self.inflight.pop((body[0] << 8) | body[1], None)
            else:
                self.counters["bad_packets"] += 1
        elif kind == 0x90:                        # SUBACK
            for code in body[2:]:
                if code & 0x80:
                    self.counters["sub_refused"] += 1
        elif kind == 0xD0:                        # PINGRESP
            self._ping_sent = None
        else:
            self.counters["bad_packets"] += 1

    def _incoming(self, first, body):
        qos = (first >> 1) & 3
        if len(body) < 2:
            self.counters["bad_packets"] += 1
            return
        tlen = (body[0] << 8) | body[1]
        pos = 2 + tlen
        if qos:
            pos += 2
        if len(body) < pos or qos == 3:
            self.counters["bad_packets"] += 1
            return
        if qos == 1:
            self._send(packet(0x40, body[pos - 2:pos]))
        elif qos == 2:                  # never subscribed at QoS 2: refuse to take part
            self.counters["bad_packets"] += 1
            return
        self.counters["received"] += 1
        try:
            topic = body[2:2 + tlen].decode()
        except UnicodeError:
            self.counters["bad_packets"] += 1
            return
        if self.on_message is not None:
            try:
                self.on_message(topic, body[pos:], bool(first & 1))
            except Exception as e:  # noqa: BLE001 - a bad message must not kill the link
                self.counters["handler_errors"] += 1
                self.last_error = "handler: %r" % (e,)

    def wait(self, timeout_ms):
        """Sleep until data arrives or timeout_ms passed."""
        if self._poll is None:
            sleep_ms(timeout_ms)
        else:
            self._poll.poll(timeout_ms)


class Backoff:
    """Reconnect delays: first_ms, doubling up to max_ms, each with up to 25 % jitter so a
    community of devices does not reconnect in lockstep after a broker restart."""

    def __init__(self, first_ms=1000, max_ms=30000):
        self.first_ms = first_ms
        self.max_ms = max_ms
        self.delay_ms = 0
        self.due = None

    def ready(self, now):
        return self.due is None or ticks_diff(now, self.due) >= 0

    def failed(self, now):
        self.delay_ms = min(self.max_ms, max(self.first_ms, self.delay_ms * 2))
        jitter = self.delay_ms * urandom(1)[0] // 1024
        self.due = ticks_add(now, self.delay_ms - jitter)
        return self.delay_ms

    def reset(self):
        self.delay_ms = 0
        self.due = None
