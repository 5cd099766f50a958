"""EEA amounts, prices (EEA per kWh) and energy (Wh) as people type and read them.

Amounts are integers from the wire to the database (EEA base units, 18 decimals; Wh);
text becomes one here, at the edge, exactly or not at all: never through a float or a
rounding Decimal context. Input may be hostile (CLI, config, web form), so the digits
are bounded before any arithmetic: "1e999999999" is an error, not a giant integer.

One rule for what people type (CLI options and config values): a bare number is EEA
(prices: EEA per kWh; energy: Wh unless 'kWh' is written); base units only with the
suffix 'base' (or 'wei'): '25' = '25 EEA' = '25000000000000000000 base'. Programs pass
ints, which are base units.
"""
import re

import click

EEA_DECIMALS = 18
EEA = 10**EEA_DECIMALS            # one EEA in base units
EEA_SUPPLY = 700_000_000 * EEA    # EEA's fixed supply: no amount is larger

# The largest price, base units per kWh (40 digits): far beyond any real price; the
# market refuses an order that costs more than the supply by its cost.
MAX_PRICE = 10**40 - 1

# The largest energy quantity, Wh (1 TWh, far beyond any community). The store keeps Wh
# as SQLite integers (at most 2**63 - 1); this refuses the absurd before it gets there.
MAX_WH = 10**12

_UNITS = {"eea": EEA_DECIMALS, "kwh": 3, "wh": 0, "base": 0, "wei": 0}  # unit → power of ten
_BARE = {"base": 0, "eea": EEA_DECIMALS}
_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?(?:e([+-]?[0-9]+))?")
_PRICE_HINT = "decimal EEA per kWh like '0.55' or '0.55 EEA', or base units like '550000000000000000 base'"
_EEA_HINT = "decimal EEA like '25' or '25 EEA', or base units like '25000000000000000000 base'"
_MONEY_UNITS = ("eea", "base", "wei")
# above this a money-moving command asks first (`confirm_amount`); --yes skips the question
CONFIRM_ABOVE = 100 * EEA


class UnitError(ValueError):
    """Not an amount, price or energy quantity; the message is one line naming the input."""


def _show(value):
    text = str(value)
    return repr(text[:40] + "…" if len(text) > 40 else value)


def _parse(value, *, what, hint, units, bare, minimum, maximum):
    """`value` (an int, or text in one of `units`) as an integer in [minimum, maximum].

    A number without a unit has the scale `bare`. Scale 0 (base units, Wh) is written
    as digits only, a larger one as a decimal, exponent allowed ('1.5', '15e-1')."""
    article = "an" if what[0].lower() in "aeiou" else "a"
    wrong = f"not {article} {what}: {_show(value)} ({hint})"
    too_large = f"{what} too large: {_show(value)}"
    need = "be positive" if minimum == 1 else "not be negative" if minimum == 0 else \
        f"be at least {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UnitError(f"not {article} {what}: {value!r}")
    if isinstance(value, int):
        number = value
    else:
        if not value.isascii():  # non-ASCII digits, look-alikes such as the Kelvin sign
            raise UnitError(wrong)
        text = value.strip().replace("_", "").lower()
        unit = next((u for u in units if text.endswith(u)), None)
        scale = bare if unit is None else _UNITS[unit]
        if unit is not None:
            text = text[:-len(unit)].strip()
        if text[:1] == "-" and text[1:2] in tuple("0123456789."):
            raise UnitError(f"{what} must {need}, got {_show(value)}")
        if scale == 0:
            if not text.isdigit():
                raise UnitError(wrong)
            text = text.lstrip("0") or "0"
            if len(text) > len(str(maximum)):
                raise UnitError(too_large)
            number = int(text)
        else:
            m = _DECIMAL.fullmatch(text)
            if not m or not (m[1] or m[2]):
                raise UnitError(wrong)
            number = _scaled(m[1], m[2] or "", m[3] or "0", scale, len(str(maximum)))
            if number is None:
                raise UnitError(too_large)
            if number is False:
                raise UnitError(f"{_show(value)} is not a whole number of Wh" if scale == 3
                                else f"{_show(value)} has more than {scale} decimals")
    if number < minimum:
        raise UnitError(f"{what} must {need}, got {_show(value)}")
    if number > maximum:
        raise UnitError(too_large)
    return number


def _scaled(whole, frac, exp, scale, max_digits):
    """whole.frac·10**exp·10**scale as an exact int; None if it has more than max_digits
    digits, False if it is not whole. Never builds a number larger than that."""
    digits = (whole + frac).lstrip("0")
    if not digits:
        return 0
    if len(exp.lstrip("+-").lstrip("0")) > 6:  # 1e999999999
        return False if exp.startswith("-") else None
    shift = int(exp) - len(frac) + scale
    if len(digits) + shift > max_digits:
        return None
    if shift >= 0:
        return int(digits) * 10**shift
    if -shift >= len(digits) or digits[shift:].strip("0"):
        return False
    return int(digits[:shift])


def parse_eea(value, *, bare, minimum=0, maximum=EEA_SUPPLY):
    """An EEA amount in base units: '1.5 EEA' → 15·10**17. A number without the unit is
    base units (`bare="base"`) or EEA (`bare="eea"`): every caller says which."""
    return _bare_checked(value, bare, EEA_SUPPLY, lambda: _parse(
        value, what="EEA amount", hint=_EEA_HINT, units=_MONEY_UNITS, bare=_BARE[bare],
        minimum=minimum, maximum=maximum))


def parse_price(value, *, bare, minimum=1, maximum=MAX_PRICE):
    """A price in EEA base units per kWh: '0.55 EEA' → 55·10**16; `bare` as in parse_eea."""
    return _bare_checked(value, bare, EEA_SUPPLY, lambda: _parse(
        value, what="price", hint=_PRICE_HINT, units=_MONEY_UNITS, bare=_BARE[bare],
        minimum=minimum, maximum=maximum))


def _bare_checked(value, bare, most, parse):
    """A bare number read as EEA that exceeds the whole supply was almost surely meant
    as base units (the old spelling): refused, saying how to write base units."""
    try:
        number = parse()
    except UnitError as e:
        number, error = None, e
    plain = isinstance(value, str) and bare == "eea" and \
        not value.strip().lower().endswith(_MONEY_UNITS)
    if plain and (number is None and "too large" in str(error) or number is not None and number > most):
        text = value.strip()
        example = f" ('{text} base')" if len(text) <= 40 else ""
        raise UnitError(f"{_show(value)} is more than all 700,000,000 EEA: a bare number is EEA; "
                        f"write base units with the suffix 'base'{example}")
    if number is None:
        raise error
    return number


def parse_wh(value, *, minimum=1, maximum=MAX_WH):
    """An energy quantity in Wh: 1500, '1500', '1500 Wh', '1.5 kWh' → 1500."""
    return _parse(value, what="energy quantity", hint="Wh, or '1.5 kWh'", units=("kwh", "wh"),
                  bare=0, minimum=minimum, maximum=maximum)


def _int(units):
    if isinstance(units, bool) or not isinstance(units, int | str):
        raise UnitError(f"not an integer amount: {units!r}")
    return int(units)


def format_eea(units, unit=True):
    """Base units (int, or its decimal text from the store) as decimal EEA, exactly,
    trailing zeros dropped: 1500000000000000000 → '1.5 EEA' ('1.5' with unit=False)."""
    units = _int(units)
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), EEA)
    frac_text = f"{frac:0{EEA_DECIMALS}d}".rstrip("0")
    text = f"{sign}{whole}.{frac_text}" if frac_text else f"{sign}{whole}"
    return f"{text} EEA" if unit else text


def describe_eea(units):
    """'25 EEA (25000000000000000000 base units)': what a command is about to move."""
    return f"{format_eea(units)} ({units} base units)"


def format_price(units):
    """A price as decimal EEA per kWh without the unit ('0.55'); '-' for no price."""
    return "-" if units is None else format_eea(units, unit=False)


def format_kwh(wh):
    """Wh as kWh with three decimals: 1500 → '1.500'; '' for no value."""
    if wh is None:
        return ""
    wh = _int(wh)
    sign = "-" if wh < 0 else ""
    return f"{sign}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


class _UnitType(click.ParamType):
    """A click parameter read by one of the parsers above; its message is click's error."""

    def __init__(self, **options):
        self.options = options

    def convert(self, value, param, ctx):
        try:
            return self.parse(value, **self.options)
        except UnitError as e:
            self.fail(str(e), param, ctx)


class EeaType(_UnitType):
    """`type=EeaType(bare="eea")`: an EEA amount in base units."""

    name = "EEA"
    parse = staticmethod(parse_eea)


class PriceType(_UnitType):
    """`type=PriceType(bare="eea")`: a price in EEA base units per kWh."""

    name = "PRICE"
    parse = staticmethod(parse_price)


class WhType(_UnitType):
    """`type=WhType()`: an energy quantity in Wh."""

    name = "WH"
    parse = staticmethod(parse_wh)
