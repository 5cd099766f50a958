"""firmware/flashlog.py and firmware/sequence.py under MicroPython, on the real filesystem.

Power cuts are simulated the way they look on flash: a file cut short at any byte of the
record being appended, or garbage after the last good record.
"""
import os

from firmware import flashlog
from firmware.flashlog import HEADER_SIZE, FlashLog
from firmware.hal.unix import Hal
from firmware.sequence import BLOCK, Sequence

BASE = "/tmp/mp_flashlog_%d" % (int.from_bytes(os.urandom(4), "big"))


def _rm(path):
    try:
        names = os.listdir(path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for n in names:
        _rm(path + "/" + n)
    os.rmdir(path)


_n = [0]


def fresh_dir():
    _n[0] += 1
    path = "%s/%d" % (BASE, _n[0])
    try:
        os.mkdir(BASE)
    except OSError:
        pass
    _rm(path)
    return path


def teardown_module():
    _rm(BASE)


def body(seq, size=470):
    text = "OCMF|{\"PG\":\"F%d\"}|" % seq
    return (text + "x" * (size - len(text))).encode()


def fill(log, first, last, size=470):
    for s in range(first, last + 1):
        log.append(s, 1000 * s, 7 * s, body(s, size))


def segs(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def size(path):
    return os.stat(path)[6]


def cut(path, n):
    with open(path, "rb") as f:
        data = f.read(n)
    with open(path, "wb") as f:
        f.write(data)


def test_append_replay_ack_and_reopen():
    path = fresh_dir()
    log = FlashLog(path)
    assert log.fresh and log.last_seq is None and log.depth() == 0
    fill(log, 1, 5)
    assert log.depth() == 5 and log.last_seq == 5 and log.last_regs == (5000, 35)
    assert log.next_after(0) == (1, body(1))
    assert log.next_after(3) == (4, body(4))
    assert log.next_after(5) is None
    assert log.ack(3) and log.depth() == 2
    assert log.next_after(0) == (4, body(4)), "acknowledged records are never replayed"
    log = FlashLog(path)
    assert not log.fresh
    assert (log.acked, log.last_seq, log.last_regs, log.depth()) == (3, 5, (5000, 35), 2)
    assert [r[0] for r in log.records()] == [1, 2, 3, 4, 5]


def test_newest_record_is_known_after_everything_is_acknowledged():
    path = fresh_dir()
    log = FlashLog(path, 16 * 1024, 4)
    assert log.newest() is None
    fill(log, 1, 20)                  # several segments
    assert log.newest() == (20, body(20))
    assert log.ack(20) and log.next_after(19) is None
    log = FlashLog(path, 16 * 1024, 4)
    assert log.newest() == (20, body(20)), "the app reads the meter serial from it"


def test_sequence_must_grow():
    log = FlashLog(fresh_dir())
    fill(log, 1, 2)
    for bad in (2, 1):
        try:
            log.append(bad, 0, 0, body(bad))
        except flashlog.LogError:
            continue
        raise AssertionError("append of an old sequence accepted")


def test_hostile_acks_are_clamped_or_ignored():
    log = FlashLog(fresh_dir())
    assert not log.ack(5), "ack before any record"
    fill(log, 1, 4)
    assert not log.ack(-1) and not log.ack(True) and not log.ack("3") and not log.ack(0)
    assert log.ack(1000) and log.acked == 4, "ack above the newest record is clamped"
    assert not log.ack(2), "acks never go back"
    fill(log, 5, 6)
    assert log.depth() == 2 and log.next_after(0)[0] == 5


def test_torn_tail_at_every_byte_of_the_last_record():
    template = fresh_dir()
    log = FlashLog(template)
    fill(log, 1, 3)
    name = template + "/" + segs(template)[0]
    full = size(name)
    rec = HEADER_SIZE + len(body(3))
    with open(name, "rb") as f:
        data = f.read()
    for n in list(range(full - rec, full - rec + HEADER_SIZE + 3)) + list(range(full - 40, full)):
        path = fresh_dir()
        os.mkdir(path)
        with open(path + "/" + segs(template)[0], "wb") as f:
            f.write(data[:n])
        log = FlashLog(path)
        assert log.last_seq == 2, (n, log.last_seq)
        assert log.torn == (1 if n > full - rec else 0), n
        assert [r[0] for r in log.records()] == [1, 2]
        # the device goes on: seq 3 again (it was never published), then 4
        log.append(3, 3000, 21, body(3))
        log.append(4, 4000, 28, body(4))
        log = FlashLog(path)
        assert [r[0] for r in log.records()] == [1, 2, 3, 4], n
        assert log.last_seq == 4 and log.depth() == 4
        assert log.next_after(2) == (3, body(3))


def test_garbage_after_last_record_and_bit_flip_in_tail():
    path = fresh_dir()
    log = FlashLog(path)
    fill(log, 1, 3)
    name = path + "/" + segs(path)[0]
    with open(name, "ab") as f:
        f.write(b"\xa5R\x01\xd6" + os.urandom(300))
    log = FlashLog(path)
    assert log.last_seq == 3 and log.torn == 1
    fill(log, 4, 4)
    assert [r[0] for r in FlashLog(path).records()] == [1, 2, 3, 4]
    # one flipped bit in the newest record's body: CRC catches it, older records stay
    name = path + "/" + segs(path)[-1]
    with open(name, "rb") as f:
        data = bytearray(f.read())
    data[-5] ^= 0x10
    with open(name, "wb") as f:
        f.write(data)
    log = FlashLog(path)
    assert [r[0] for r in log.records()] == [1, 2, 3] and log.last_seq == 3


def test_bounded_oldest_dropped_and_counted():
    path = fresh_dir()
    log = FlashLog(path, max_bytes=8192, segments=4)
    fill(log, 1, 40)
    total = sum(size(path + "/" + n) for n in segs(path))
    assert total <= 8192, total
    assert log.dropped > 0 and log.depth() == 40 - log.dropped
    assert log.next_after(0)[0] == log.dropped + 1, "the oldest went first"
    assert FlashLog(path, 8192, 4).dropped == log.dropped, "dropped count persisted"
    # acknowledged records are not counted as dropped
    path = fresh_dir()
    log = FlashLog(path, max_bytes=8192, segments=4)
    fill(log, 1, 10)
    log.ack(10)
    fill(log, 11, 20)
    assert log.dropped == 0 and log.depth() == 10


def test_seven_days_of_quarter_hours_fit_in_512k():
    path = fresh_dir()
    log = FlashLog(path)           # defaults: 512 KB in 16 segments
    n = 7 * 24 * 4
    fill(log, 1, n, 480)
    assert log.dropped == 0 and log.depth() == n
    assert log.bytes_used() <= 512 * 1024


def test_ack_deletes_whole_segments_but_keeps_the_newest():
    path = fresh_dir()
    log = FlashLog(path, max_bytes=16384, segments=8)
    fill(log, 1, 20)
    before = len(segs(path))
    assert before > 3
    log.ack(20)
    assert len(segs(path)) == 1, "only the newest segment stays"
    log = FlashLog(path, 16384, 8)
    assert log.last_seq == 20 and log.last_regs == (20000, 140) and log.depth() == 0


def test_state_file_damage_means_replay_not_loss():
    path = fresh_dir()
    log = FlashLog(path)
    fill(log, 1, 4)
    log.ack(2)
    with open(path + "/state.json", "w") as f:
        f.write("{\"acked\": 2, \"dro")          # torn write of the state file
    log = FlashLog(path)
    assert log.acked == 0 and log.depth() == 4 and not log.fresh


def test_cursor_follows_segments_and_resend():
    path = fresh_dir()
    log = FlashLog(path, max_bytes=16384, segments=8)
    fill(log, 1, 30)
    seen = []
    s = 0
    while True:
        rec = log.next_after(s)
        if rec is None:
            break
        seen.append(rec[0])
        s = rec[0]
    assert seen == list(range(1, 31))
    assert log.next_after(9)[0] == 10, "resend from an earlier number"


def test_sequence_counter_reserved_before_use_and_wiped_log():
    state = fresh_dir()
    hal = Hal(state)
    log = FlashLog(hal.log_dir)
    seq = Sequence(log, hal)
    n = seq.claim()
    assert n == 1 and Hal(state).get_counter("seq_reserved") >= 1, "reserved before use"
    log.append(n, 0, 0, body(n))
    seq.used(n)
    for _ in range(BLOCK + 3):
        n = seq.claim()
        log.append(n, 0, 0, body(n))
        seq.used(n)
    assert Hal(state).get_counter("seq_reserved") >= n
    # reboot: continues from the log, no gap
    assert Sequence(FlashLog(hal.log_dir), Hal(state)).claim() == n + 1
    # a claimed number whose record never made it to flash is taken again (never published)
    assert Sequence(FlashLog(hal.log_dir), Hal(state)).claim() == n + 1
    # the filesystem is wiped: continue above every number that might have been used
    _rm(hal.log_dir)
    hal2 = Hal(state)
    log2 = FlashLog(hal2.log_dir)
    assert log2.fresh
    m = Sequence(log2, hal2).claim()
    assert m > n, (m, n)
