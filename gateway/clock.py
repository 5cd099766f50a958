"""Domain time: the wall clock, or one simulated clock shared by every process of a demo.

`make demo` runs a community's day in a few minutes. For the readings, the 15-minute
intervals, the settlement grace, the market's trade intervals and the charging sessions
to agree, every process must read the same accelerated time: the demo sets
EGS_CLOCK="<origin_epoch>:<speed>:<real_start_epoch>" for everything it starts
(docs/demo.md, "One clock for every process"). Unset (production, tests), now() is
time.time(). Only *domain* time reads it; timeouts, backoff and liveness stay on the real
clock. The firmware's unix HAL (firmware/hal/unix.py) parses the same variable itself
(MicroPython cannot import this).
"""
import os
import time

ENV = "EGS_CLOCK"

_cached = (None, None)


def parse(text):
    """'origin:speed:real_start' -> (origin, speed, real_start) as floats; ValueError else."""
    parts = str(text).strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"{ENV} must be ORIGIN:SPEED:REAL_START (epoch seconds), got {text!r}")
    try:
        origin, speed, real_start = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{ENV}: numbers expected, got {text!r}") from None
    if not speed > 0 or origin < 0 or real_start < 0:
        raise ValueError(f"{ENV}: speed must be positive and epochs not negative, got {text!r}")
    return origin, speed, real_start


def spec():
    """The parsed EGS_CLOCK, or None when the wall clock is in force."""
    global _cached
    text = os.environ.get(ENV)
    if not text:
        return None
    if _cached[0] != text:
        _cached = (text, parse(text))
    return _cached[1]


def active():
    return spec() is not None


def now():
    """Domain time, epoch seconds (float)."""
    s = spec()
    t = time.time()
    if s is None:
        return t
    origin, speed, real_start = s
    return origin + (t - real_start) * speed


def speed():
    s = spec()
    return 1.0 if s is None else s[1]


def make(origin, speed, real_start=None):
    """The EGS_CLOCK value for a clock at `origin` now (or at real_start), `speed` times real time."""
    real_start = time.time() if real_start is None else real_start
    parse(f"{origin}:{speed}:{real_start}")
    return f"{origin!r}:{speed!r}:{real_start!r}"
