"""firmware/mqtt.py under MicroPython without a network: encoding, packet ids, framing, backoff.

The parts that need a broker are in tests/firmware/test_firmware_mqtt.py (real mosquitto)."""
from firmware import mqtt
from firmware.mqtt import Backoff, Client, MQTTError


class FakeSock:
    """A socket that hands out scripted chunks: the framing code reads through it."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.sent = []

    def readinto(self, view):
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        if chunk is None:
            return 0                                   # peer closed
        n = min(len(view), len(chunk))
        view[:n] = chunk[:n]
        if n < len(chunk):
            self.chunks.insert(0, chunk[n:])
        return n

    def write(self, data):
        self.sent.append(bytes(data))
        return len(data)

    def close(self):
        pass


def client_with(chunks, **kw):
    got = []
    c = Client("dev", None, on_message=lambda t, p, r: got.append((t, bytes(p))), **kw)
    c.sock = FakeSock(chunks)
    return c, got


def test_remaining_length_encoding_boundaries():
    for n, enc in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                   (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
                   (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")):
        assert mqtt._varint(n) == enc, n


def test_connect_packet_layout():
    c = Client("dev-1", None, user="u", password="p", keepalive_s=60,
               will=("egs/v1/c/dev-1/status", b'{"state":"offline"}', True))
    pkt = c._connect_packet()
    assert pkt[0] == 0x10
    body = pkt[2:]
    assert body[:7] == b"\x00\x04MQTT\x04"
    # user, password, will retain, will QoS 1, will flag, clean session
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert body[8:10] == b"\x00\x3c"
    assert body[10:] == (b"\x00\x05dev-1" + b"\x00\x15egs/v1/c/dev-1/status"
                         + b'\x00\x13{"state":"offline"}' + b"\x00\x01u" + b"\x00\x01p")
    assert len(body) == pkt[1]


def test_packet_ids_wrap_and_skip_ids_in_flight():
    c = Client("d", None)
    c._pid = 65533
    got = [c._next_pid() for _ in range(4)]
    assert got == [65534, 65535, 1, 2], got
    c.inflight = {3: 0, 4: 0, 65535: 0}
    c._pid = 65534
    assert [c._next_pid() for _ in range(2)] == [1, 2]
    assert c._next_pid() == 5, "ids still in flight are skipped"
    class Everything:
        def __contains__(self, pid):
            return True

    c.inflight = Everything()       # all 65535 ids in flight
    try:
        c._next_pid()
    except MQTTError:
        pass
    else:
        raise AssertionError("no free id must be an error, not id 0")


def test_publish_window_and_puback_frees_ids():
    c, _ = client_with([])
    c.max_inflight = 2
    a = c.publish("t", b"x")
    b = c.publish("t", b"y")
    assert not c.can_publish()
    try:
        c.publish("t", b"z")
    except MQTTError:
        pass
    else:
        raise AssertionError("window exceeded")
    c.sock.chunks = [bytes((0x40, 2, a >> 8, a & 0xFF))]
    c.poll()
    assert c.connected and a not in c.inflight and b in c.inflight and c.can_publish()
    pub = c.sock.sent[0]
    assert pub[0] == 0x32 and pub[-1:] == b"x"


def test_incoming_publish_split_across_reads_qos1_acked():
    topic = b"egs/v1/c/d/cmd"
    body = b"\x00" + bytes((len(topic),)) + topic + b"\x12\x34" + b'{"cmd":"reboot"}'
    frame = bytes((0x32, len(body))) + body
    c, got = client_with([frame[:3], frame[3:9], frame[9:] + b"\xd0\x00"])
    for _ in range(4):
        c.poll()
    assert got == [("egs/v1/c/d/cmd", b'{"cmd":"reboot"}')]
    assert b"\x40\x02\x12\x34" in c.sock.sent, "PUBACK with the same id"
    assert c.connected


def test_oversize_packet_skipped_next_one_delivered():
    big = b"\x00\x01t" + b"A" * 5000
    frame = b"\x30" + mqtt._varint(len(big)) + big
    ok = b"\x30" + bytes((5,)) + b"\x00\x01tOK"
    chunks = [frame[i:i + 700] for i in range(0, len(frame), 700)] + [ok]
    c, got = client_with(chunks)
    for _ in range(20):
        c.poll()
    assert got == [("t", b"OK")], got
    assert c.counters["oversize"] == 1 and c.connected


def test_hostile_frames_never_crash():
    cases = [
        b"\x30\xff\xff\xff\xff\x7f",          # remaining length of five bytes: protocol error
        b"\x30\x01\x00",                      # PUBLISH too short for a topic length
        b"\x30\x03\x00\x09a",                 # topic length beyond the packet
        b"\x36\x05\x00\x01tAB",               # QoS 3 does not exist
        b"\x34\x05\x00\x01t\x00\x01",         # QoS 2, never subscribed at 2
        b"\x30\x05\x00\x01\xfftx",            # topic not UTF-8
        b"\x40\x03\x00\x01\x02",              # PUBACK of the wrong size
        b"\xf0\x00",                          # reserved packet type
    ]
    for frame in cases:
        c, got = client_with([frame])
        c.poll()
        assert got == [], frame
        # either counted and still connected, or disconnected with a reason
        assert c.connected or c.last_error, frame
    c, _ = client_with([None])
    c.poll()
    assert not c.connected and "closed" in c.last_error


def test_handler_exception_is_contained():
    def boom(topic, payload, retained):
        raise ValueError("bad")

    c = Client("d", None, on_message=boom)
    c.sock = FakeSock([b"\x30\x05\x00\x01tAB"])
    c.poll()
    assert c.connected and c.counters["handler_errors"] == 1


def test_backoff_doubles_with_jitter_and_caps():
    b = Backoff(500, 4000)
    assert b.ready(0)
    delays = [b.failed(0) for _ in range(6)]
    assert delays == [500, 1000, 2000, 4000, 4000, 4000], delays
    assert not b.ready(0) and b.ready(4000)
    b.reset()
    assert b.ready(0) and b.failed(0) == 500
