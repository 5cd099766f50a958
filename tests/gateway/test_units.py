"""gateway.units: the one place text becomes EEA, prices and Wh and back. Exact both ways,
and hostile text (huge exponents, nan, non-ASCII digits, values past the EEA supply or
SQLite's INTEGER) is a one-line UnitError naming the input, never a hang or a crash."""
from fractions import Fraction

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from gateway.units import (
    EEA,
    EEA_SUPPLY,
    MAX_PRICE,
    MAX_WH,
    EeaType,
    PriceType,
    UnitError,
    WhType,
    format_eea,
    format_kwh,
    format_price,
    parse_eea,
    parse_price,
    parse_wh,
)

SQLITE_MAX = 2**63 - 1


@pytest.mark.parametrize("text,bare,units", [
    ("123", "base", 123),
    ("1.5 EEA", "base", 15 * 10**17),
    ("1.5EEA", "base", 15 * 10**17),
    ("0.30eea", "base", 3 * 10**17),
    ("  25 EEA\n", "base", 25 * EEA),
    ("25_000", "base", 25_000),
    ("25", "eea", 25 * EEA),
    ("0.000000000000000001", "eea", 1),
    ("1e-18 EEA", "base", 1),
    ("15e-1 EEA", "base", 15 * 10**17),
    (".5 EEA", "base", 5 * 10**17),
    ("0 EEA", "base", 0),
    ("700000000 EEA", "base", EEA_SUPPLY),
    (7, "base", 7),
])
def test_eea_amounts(text, bare, units):
    assert parse_eea(text, bare=bare) == units


@pytest.mark.parametrize("text,price", [
    ("550000000000000000", 55 * 10**16),
    ("0.55 EEA", 55 * 10**16),
    ("0.55eea", 55 * 10**16),
    ("1" + "0" * 30, 10**30),               # absurd but a price: the market refuses it by cost
    (5, 5),
])
def test_prices(text, price):
    assert parse_price(text, bare="base") == price


@pytest.mark.parametrize("text,wh", [
    ("1500", 1500), ("1500 Wh", 1500), ("1500wh", 1500), ("1.5 kWh", 1500), ("1.5KWH", 1500),
    ("0.001 kWh", 1), ("2e3 kWh", 2_000_000), (1500, 1500), (str(MAX_WH), MAX_WH),
])
def test_energy(text, wh):
    assert parse_wh(text) == wh


def test_zero_only_where_allowed():
    assert parse_eea("0", bare="base") == 0
    assert parse_price("0", bare="base", minimum=0) == 0
    assert parse_wh("0 kWh", minimum=0) == 0
    with pytest.raises(UnitError, match="price must be positive, got '0'"):
        parse_price("0", bare="base")
    with pytest.raises(UnitError, match="energy quantity must be positive"):
        parse_wh(0)


def test_a_bare_number_is_eea_and_base_units_need_their_suffix():
    assert parse_eea("25", bare="eea") == 25 * EEA
    assert parse_eea("25 base", bare="eea") == parse_eea("25wei", bare="eea") == 25
    assert parse_eea("25000000000000000000 base", bare="eea") == 25 * EEA
    assert parse_price("0.55", bare="eea") == parse_price("550000000000000000 base", bare="eea")


def test_bare_must_be_said():
    with pytest.raises(TypeError):
        parse_eea("5")
    with pytest.raises(KeyError):
        parse_price("5", bare="wei")


PARSERS = [  # (parser, smallest, largest)
    (lambda v: parse_eea(v, bare="base"), 0, EEA_SUPPLY),
    (lambda v: parse_eea(v, bare="eea"), 0, EEA_SUPPLY),
    (lambda v: parse_price(v, bare="base"), 1, MAX_PRICE),
    (lambda v: parse_price(v, bare="eea"), 1, MAX_PRICE),
    (parse_wh, 1, MAX_WH),
]
PARSER_IDS = ["eea-base", "eea-eea", "price-base", "price-eea", "wh"]


@pytest.mark.parametrize("parse,low,high", PARSERS, ids=PARSER_IDS)
@pytest.mark.parametrize("value", [
    "nan", "NaN EEA", "snan eea", "inf", "-inf", "Infinity EEA", "inf kWh", "nan kWh",
    "1e999999999", "1e999999999 EEA", "1e999999999 kWh", "1E999999999eea",
    "1e" + "9" * 5000 + " EEA", "9" * 5000, "9" * 5000 + " kWh", "x" * 5000,
    "-0", "-0 EEA", "-0 kWh", "-1", "+1", "- 1", "--1",
    "", " ", "\t\n", "EEA", "kWh", "Wh", ".", ". EEA", "e5 EEA", "1e EEA", "1.2.3 EEA",
    "\u0661\u0662",                  # ARABIC-INDIC digits: str.isdigit() and int() take them
    "\uff11\uff12 EEA",              # FULLWIDTH digits
    "\u00b2",                        # SUPERSCRIPT TWO: isdigit() but not int()
    "1.5 \u212awh",                  # KELVIN SIGN lower-cases to "k"
    "1\u00a0000",                    # no-break space inside
    "1 000", "0x10", "1/2", "1,5 EEA", "1.5 EEA EEA", "1.5 Wh",
    "1e-19 EEA", "0.0000000000000000001", "1.0005 kWh", "1e-999999999 EEA", "1e-999999999 kWh",
    "1e40 EEA", str(MAX_PRICE + 1), str(MAX_PRICE + 1) + " EEA",
    1.5, float("nan"), float("inf"), True, False, None, b"5", -1, MAX_PRICE + 1,
])
def test_hostile_input_is_one_line_error(parse, low, high, value):
    with pytest.raises(UnitError) as e:
        parse(value)
    assert "\n" not in str(e.value) and 0 < len(str(e.value)) < 200, str(e.value)


@pytest.mark.parametrize("parse,low,high", PARSERS, ids=PARSER_IDS)
@pytest.mark.parametrize("value", [
    str(EEA_SUPPLY + 1), "700000000.000000000000000001 EEA", EEA_SUPPLY + 1,   # past the supply
    str(SQLITE_MAX + 1), str(SQLITE_MAX + 1) + " Wh", "9223372036854776 kWh",  # past INTEGER
    SQLITE_MAX + 1, "1.5", "1.5 EEA", "1.5 kWh",
])
def test_edges_are_in_range_or_refused(parse, low, high, value):
    """Past the supply only prices pass (an order's cost is bounded by the market);
    past SQLite's INTEGER no Wh does (EEA is stored as text)."""
    try:
        result = parse(value)
    except UnitError as e:
        assert "\n" not in str(e)
    else:
        assert type(result) is int and low <= result <= high


@pytest.mark.parametrize("call,message", [
    (lambda: parse_price("0.5", bare="base"), "not a price: '0.5' (decimal EEA per kWh"),
    (lambda: parse_price("1e-19 EEA", bare="base"), "'1e-19 EEA' has more than 18 decimals"),
    (lambda: parse_price("1e99999999 EEA", bare="base"), "price too large: '1e99999999 EEA'"),
    (lambda: parse_wh("1.0005 kWh"), "'1.0005 kWh' is not a whole number of Wh"),
    (lambda: parse_wh("9" * 5000), "energy quantity too large: '" + "9" * 40 + "…'"),
    (lambda: parse_wh(str(SQLITE_MAX + 1)), "energy quantity too large"),
    (lambda: parse_eea("lots", bare="base"), "not an EEA amount: 'lots' (decimal EEA like '25'"),
    (lambda: parse_eea("-0", bare="base"), "EEA amount must not be negative, got '-0'"),
    (lambda: parse_eea("700000001 EEA", bare="base"), "EEA amount too large: '700000001 EEA'"),
    (lambda: parse_eea("\u0661", bare="base"), "not an EEA amount: '\u0661'"),
    (lambda: parse_eea(0.5, bare="eea"), "not an EEA amount: 0.5"),
    (lambda: parse_price("550000000000000000", bare="eea"),
     ("'550000000000000000' is more than all 700,000,000 EEA: a bare number is EEA; write base units "
      "with the suffix 'base' ('550000000000000000 base')")),
])
def test_messages_name_the_input(call, message):
    with pytest.raises(UnitError) as e:
        call()
    assert str(e.value).startswith(message), str(e.value)


def test_unit_error_is_a_value_error():
    """Callers (cliutil.common_options, config validation) catch ValueError."""
    assert issubclass(UnitError, ValueError)


@pytest.mark.parametrize("units,text", [
    (0, "0 EEA"), (1, "0.000000000000000001 EEA"), (EEA, "1 EEA"), (15 * 10**17, "1.5 EEA"),
    (100 * EEA, "100 EEA"), (-25 * 10**17, "-2.5 EEA"), ("2500000000000000000", "2.5 EEA"),
    (EEA_SUPPLY, "700000000 EEA"),
])
def test_format_eea(units, text):
    assert format_eea(units) == text
    assert format_eea(units, unit=False) == text[:-4]


def test_format_price_and_kwh():
    assert format_price(None) == "-"
    assert format_price(55 * 10**16) == "0.55"
    assert format_price(10 * EEA) == "10"
    assert format_kwh(None) == ""
    assert [format_kwh(v) for v in (0, 7, 1500, -1500, -7, 10**12)] == \
        ["0.000", "0.007", "1.500", "-1.500", "-0.007", "1000000000.000"]
    for bad in (1.5, True, None):
        with pytest.raises(UnitError):
            format_eea(bad)


# ---- properties ----------------------------------------------------------------------------

amounts = st.integers(0, EEA_SUPPLY)
prices = st.integers(1, MAX_PRICE)
energies = st.integers(1, MAX_WH)


@given(amounts)
def test_eea_round_trips(units):
    assert parse_eea(format_eea(units), bare="base") == units
    assert parse_eea(format_eea(units), bare="eea") == units
    assert parse_eea(format_eea(units, unit=False), bare="eea") == units
    assert parse_eea(str(units), bare="base") == units
    assert parse_eea(units, bare="eea") == units  # an int is always base units


@given(prices)
def test_price_round_trips(price):
    assert parse_price(format_price(price) + " EEA", bare="base") == price
    if price <= EEA_SUPPLY:     # a bare number beyond the supply is refused (old base units)
        assert parse_price(format_price(price), bare="eea") == price
    assert parse_price(f"{price} base", bare="eea") == price
    assert parse_price(str(price), bare="base") == price


@given(energies)
def test_wh_round_trips(wh):
    assert parse_wh(format_kwh(wh) + " kWh") == wh
    assert parse_wh(f"{wh} Wh") == parse_wh(str(wh)) == wh


@given(st.integers(-(10**40), 10**40))
def test_formats_match_the_copies_they_replace(units):
    """Byte for byte what ledger/commands._eea, ocpp_cs.settings.format_eea,
    market.settings.format_price and the _kwh helpers printed."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**18)
    ledger = f"{sign}{whole}.{frac:018d}".rstrip("0").rstrip(".")
    ocpp = (f"{sign}{whole}.{str(frac).rjust(18, '0').rstrip('0')} EEA" if frac
            else f"{sign}{whole} EEA")
    assert format_eea(units, unit=False) == format_price(units) == ledger
    assert format_eea(units) == ocpp
    assert format_kwh(units) == f"{sign}{abs(units) // 1000}.{abs(units) % 1000:03d}"


@given(st.integers(0, 10**12), st.integers(0, 18), st.integers(-5, 5))
def test_decimal_text_is_exact(mantissa, decimals, exponent):
    """Any decimal spelling is read exactly (Fraction is the oracle), or refused."""
    digits = str(mantissa).rjust(decimals + 1, "0")
    text = f"{digits[:len(digits) - decimals]}.{digits[len(digits) - decimals:]}e{exponent}"
    exact = Fraction(mantissa, 10**decimals) * Fraction(10) ** exponent * EEA
    if exact.denominator != 1:
        with pytest.raises(UnitError, match="decimals"):
            parse_eea(text + " EEA", bare="base")
    elif exact > EEA_SUPPLY:
        with pytest.raises(UnitError, match="too large"):
            parse_eea(text + " EEA", bare="base")
    else:
        assert parse_eea(text + " EEA", bare="base") == exact


@given(st.text(max_size=60) | st.from_regex(r"\s*-?[0-9_.]{0,30}(e[+-]?[0-9]{0,12})?\s*(EEA|eea|kWh|Wh)?\s*"))
def test_any_text_is_a_number_in_range_or_a_unit_error(text):
    for parse, low, high in ((lambda t: parse_eea(t, bare="base"), 0, EEA_SUPPLY),
                             (lambda t: parse_eea(t, bare="eea"), 0, EEA_SUPPLY),
                             (lambda t: parse_price(t, bare="base"), 1, MAX_PRICE),
                             (parse_wh, 1, MAX_WH)):
        try:
            value = parse(text)
        except UnitError as e:
            assert "\n" not in str(e)
        else:
            assert type(value) is int and low <= value <= high


# ---- click ---------------------------------------------------------------------------------

@click.command()
@click.option("--qty", type=WhType())
@click.option("--price", type=PriceType(bare="base"))
@click.option("--amount", type=EeaType(bare="eea"))
def _cmd(qty, price, amount):
    click.echo(f"{qty} {price} {amount}")


def test_click_types():
    r = CliRunner().invoke(_cmd, ["--qty", "1.5 kWh", "--price", "0.55 EEA", "--amount", "2"])
    assert r.exit_code == 0 and r.output == f"1500 {55 * 10**16} {2 * EEA}\n"
    r = CliRunner().invoke(_cmd, ["--qty", "1e999999999 kWh"])
    assert r.exit_code == 2 and "Invalid value for '--qty': energy quantity too large" in r.output
    r = CliRunner().invoke(_cmd, ["--price", "nan EEA"])
    assert r.exit_code == 2 and "not a price: 'nan EEA'" in r.output
