"""Power over the day: the load and PV curves the emulated meters count energy from.

Pure functions of the time of day (seconds since midnight, W, + = import), so the meter
emulator (sim/meter.py) and the demo's report (sim/report.py, the simulator's "truth"
that no meter measures separately) compute the same figures. A household scales and
shifts the load curve and has its PV peak (sim/households.py); one Weather dims every
PV system of a community alike.
"""
import math

PROFILES = ("flat", "household", "pv")


def _bump(t, centre, width, height):
    """A smooth bump of `height` W centred on `centre` s, zero beyond +-width."""
    d = abs(t - centre)
    if d >= width:
        return 0.0
    return height * 0.5 * (1 + math.cos(math.pi * d / width))


def household_w(t):
    """Household consumption over the day (t = seconds since midnight)."""
    return (250 + _bump(t, 7.5 * 3600, 1.5 * 3600, 1200) + _bump(t, 12.5 * 3600, 1 * 3600, 600)
            + _bump(t, 19.5 * 3600, 2.5 * 3600, 2200))


def pv_w(t, peak=5000):
    """PV generation: half a sine from 06:00 to 20:00."""
    day = t / 3600 - 6
    return peak * math.sin(math.pi * day / 14) if 0 < day < 14 else 0.0


def profile_power_w(profile, t, flat_w=1000):
    """Net power at the meter in W (positive import, negative export)."""
    if profile == "flat":
        return int(flat_w)
    if profile == "household":
        return round(household_w(t))
    if profile == "pv":
        return round(household_w(t) - pv_w(t))
    raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")


class Weather:
    """The same sky over the whole village: passing clouds dim every PV system alike."""

    def __init__(self, rnd):
        self.p = [rnd.uniform(0, 2 * math.pi) for _ in range(3)]

    def factor(self, t):
        a = math.sin(2 * math.pi * t / 7700 + self.p[0])
        b = math.sin(2 * math.pi * t / 2900 + self.p[1])
        c = math.sin(2 * math.pi * t / 86400 * 3 + self.p[2])
        return max(0.25, min(1.0, 0.82 + 0.18 * a * b - 0.12 * max(0.0, c)))


def load_w(h, t):
    """Household h's consumption: the load curve scaled by h.load_scale, shifted by
    h.load_shift_s."""
    return h.load_scale * household_w((t - h.load_shift_s) % 86400)


def pv_now_w(h, weather, t):
    """Household h's PV output (peak h.pv_peak_w) under the weather."""
    return pv_w(t % 86400, h.pv_peak_w) * weather.factor(t) if h.pv_peak_w else 0.0


def truth_wh(h, weather, t0, t1, step=60):
    """(generated, consumed) Wh of household h between epoch seconds t0 and t1: what the
    simulator made happen, integrated as the meter integrates it (mid-step power)."""
    gen = con = 0.0
    t = t0
    while t < t1:
        dt = min(step, t1 - t)
        mid = (t + dt / 2) % 86400
        gen += pv_now_w(h, weather, mid) * dt
        con += load_w(h, mid) * dt
        t += dt
    return gen / 3600, con / 3600
