"""The whitepaper's storage sizing (section 7.3), for any community.

  battery kWh   = households × average stored kWh per household × headroom (1.5:
                  "able to store 150% of the total average user energy balance")
  cost          = battery kWh × capacity price (200 $/kWh; installation, land and
                  secondary costs ignored, as in the whitepaper)
  area          = containers × container area (BYD: at most 800 kWh in a 40 ft
                  container of about 30 m²)
  B_max         = C_u × kWh / 150 $ for a target storage cost per user C_u,
                  where 150 $ = 0.5 (average balance ≈ half the maximum)
                  × 1.5 (headroom) × 200 $/kWh; with other inputs the same
                  derivation gives B_max = C_u / (0.5 × headroom × price).

Exact arithmetic (fractions from the decimal text), so the table is reproducible.
"""
import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

MAX_HOUSEHOLDS = 10**9  # keeps every figure a finite float for the output


class SizingError(ValueError):
    pass


def _frac(value, what, positive=True):
    text = str(value).strip()
    # Fraction("1e999999999") builds a billion-digit integer: bound the text and the
    # exponent first (the Decimal check), so hostile input is an error, not a hang.
    if len(text) > 60:
        raise SizingError(f"{what}: not a number: {value!r}")
    try:
        d = Decimal(text)
    except InvalidOperation:
        d = None  # maybe a ratio like "3/2", which Fraction reads
    if d is not None and (not d.is_finite() or (d and not -30 <= d.adjusted() <= 30)):
        raise SizingError(f"{what}: not a number in range: {value!r}")
    try:
        f = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise SizingError(f"{what}: not a number: {value!r}") from None
    if positive and f <= 0:
        raise SizingError(f"{what}: must be positive, got {value}")
    return f


def _num(f):
    """A Fraction as an int when whole, else a float rounded to 3 decimals (for output)."""
    return int(f) if f.denominator == 1 else round(float(f), 3)


def storage_row(households, average_kwh, price_per_kwh=200, headroom="1.5",
                container_kwh=800, container_sqm=30):
    if (isinstance(households, bool) or not isinstance(households, int)
            or not 0 < households <= MAX_HOUSEHOLDS):
        raise SizingError(f"households: a whole number from 1 to {MAX_HOUSEHOLDS:,}, "
                          f"got {households!r}")
    avg = _frac(average_kwh, "average kWh")
    price = _frac(price_per_kwh, "price per kWh")
    head = _frac(headroom, "headroom")
    if head < 1:
        raise SizingError(f"headroom: at least 1 (the battery holds the average), got {headroom}")
    ckwh = _frac(container_kwh, "container kWh")
    csqm = _frac(container_sqm, "container area")
    battery = households * avg * head
    cost = battery * price
    containers = math.ceil(battery / ckwh)
    return {
        "households": households,
        "average_kwh": _num(avg),
        "battery_kwh": _num(battery),
        "cost": _num(cost),
        "cost_per_household": _num(cost / households),
        "cost_per_average_kwh": _num(head * price),
        "containers": containers,
        "area_sqm": _num(containers * csqm),
    }


def bmax_kwh(target_cost, price_per_kwh=200, headroom="1.5", average_share="0.5"):
    """B_max for a target storage cost per user: C_u / (average_share × headroom × price)."""
    c = _frac(target_cost, "target cost")
    per_kwh = _frac(average_share, "average share") * _frac(headroom, "headroom") * \
        _frac(price_per_kwh, "price per kWh")
    return c / per_kwh


def bmax_wh(target_cost, **kw):
    """B_max in whole Wh (rounded down: the cap must not cost more than the target)."""
    return math.floor(bmax_kwh(target_cost, **kw) * 1000)


def table(households, averages, price_per_kwh=200, headroom="1.5", target_cost=None,
          container_kwh=800, container_sqm=30):
    rows = [storage_row(h, a, price_per_kwh, headroom, container_kwh, container_sqm)
            for h in households for a in averages]
    out = {"rows": rows, "price_per_kwh": _num(_frac(price_per_kwh, "price per kWh")),
           "headroom": _num(_frac(headroom, "headroom"))}
    if target_cost is not None:
        out["target_cost"] = _num(_frac(target_cost, "target cost"))
        out["bmax_kwh"] = _num(bmax_kwh(target_cost, price_per_kwh=price_per_kwh,
                                        headroom=headroom))
        out["bmax_wh"] = bmax_wh(target_cost, price_per_kwh=price_per_kwh, headroom=headroom)
    return out
