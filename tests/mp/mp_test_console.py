"""The console line reader (firmware/main.py) under MicroPython: lines, over-long lines,
and a runaway console that must not grow the heap."""
import gc

from firmware.main import MAX_LINE, LineReader


def test_lines_and_blank_lines():
    r = LineReader()
    assert r.feed(b'{"a":1}\n') == [b'{"a":1}']
    assert r.feed(b'  {"b"') == []
    assert r.feed(b':2}  \n\n') == [b'{"b":2}']


def test_over_long_line_answered_once_then_next_line_read():
    r = LineReader()
    assert r.feed(b"x" * 1500) == []
    assert r.feed(b"y" * 1500) == [None]
    assert r.feed(b"z" * 3000) == []
    assert r.feed(b"zz\nok\n") == [b"ok"]
    assert r.feed(b"q" * MAX_LINE + b"\n") == [b"q" * MAX_LINE]
    assert r.feed(b"q" * (MAX_LINE + 1) + b"\n") == [None]


def test_runaway_console_does_not_grow_the_heap():
    """100 KB without a newline allocates (almost) nothing: the old reader grew a bytes
    object past 2 KB on every chunk and a MemoryError there rebooted the device."""
    import micropython

    r = LineReader()
    chunk = b"{" + b" " * 511
    gc.collect()
    before_total = micropython.mem_total()      # bytes ever allocated (churn)
    before = gc.mem_alloc()
    for _ in range(200):
        r.feed(chunk)
    churn = micropython.mem_total() - before_total
    # a few small objects per call are fine; copying the growing line on each chunk is not
    assert churn < 200 * len(chunk), churn
    gc.collect()
    assert gc.mem_alloc() - before < 1024, gc.mem_alloc() - before
    assert r.feed(b"\n{}\n") == [b"{}"]
