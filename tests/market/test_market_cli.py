"""`egs-gw market …`: the commands people and scripts use, and the storage sizing table."""
import json

import pytest

from gateway.market import sizing
from tests.gateway.fixtures import cli_invoke, egs_gw
from tests.market.fixtures import EEA, addr, credit, open_store, price

SELLER, BUYER = addr(1), addr(2)


@pytest.fixture
def env(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\ncommunity = "c1"\n[market]\nbmax_wh = 4000\n')
    dbp = tmp_path / "gw.sqlite"
    conn = open_store(dbp)
    credit(conn, SELLER, watt=1000)
    credit(conn, BUYER, eea=EEA)
    conn.close()
    return ["--config", str(conf), "--db", str(dbp)]


def gw(env, *args):
    r = cli_invoke("market", *args, *env, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_place_quote_book_trades_cancel_amend(env):
    gw(env, "place", "--account", SELLER, "--side", "sell", "--qty", "300", "--price", "0.61 EEA")
    gw(env, "place", "--account", SELLER, "--side", "sell", "--qty", "0.25 kWh",
       "--price", f"{price('0.56')} base")
    bid = gw(env, "place", "--account", BUYER, "--side", "buy", "--qty", "200", "--price", "0.55eea")
    q = gw(env, "quote")
    assert (q["best_bid"], q["best_ask"], q["spread"]) == (price("0.55"), price("0.56"),
                                                           price("0.01"))
    r = gw(env, "place", "--account", BUYER, "--side", "buy", "--qty", "100", "--market")
    assert [(t["wh"], t["price"], t["seller"]) for t in r["trades"]] == [(100, price("0.56"),
                                                                         SELLER)]
    book = gw(env, "book")
    assert [(o["price"], o["remaining"], o["executable"]) for o in book["asks"]] == [
        (price("0.56"), 150, True), (price("0.61"), 300, True)]
    trades = gw(env, "trades", "--unsettled")
    assert len(trades) == 1 and trades[0]["eea"] == 100 * price("0.56") // 1000
    amended = gw(env, "amend", str(bid["order"]["id"]), "--price", "0.57 EEA")
    assert amended["cancelled"] == bid["order"]["id"]
    # Now it crosses: takes the 150 Wh left at 0.56, the rest waits.
    assert [(t["price"], t["wh"]) for t in amended["trades"]] == [(price("0.56"), 150)]
    orders = gw(env, "orders", "--account", BUYER, "--all")
    assert sorted(o["status"] for o in orders) == ["cancelled", "filled", "open"]
    open_sell = gw(env, "orders", "--account", SELLER)[0]["id"]
    gw(env, "cancel", str(open_sell), "--account", SELLER)
    assert all(o["status"] != "open" or o["id"] != open_sell for o in gw(env, "orders", "--all"))
    assert gw(env, "settle") == []  # the interval has not closed


def test_agents_set_and_list(env):
    r = gw(env, "agents", "set", SELLER, "--sell-price", "0.60 EEA", "--sell-above", "900",
           "--keep", "100")
    assert [(o["side"], o["qty"], o["price"]) for o in r["agent_orders"]] == [
        ("sell", 900, price("0.60"))]
    (a,) = gw(env, "agents", "list")
    assert (a["owner"], a["sell_price"], a["keep_wh"]) == (SELLER, price("0.60"), 100)


@pytest.mark.parametrize("args, message", [
    (["place", "--account", SELLER, "--side", "sell", "--qty", "10"], "either --price"),
    (["place", "--account", SELLER, "--side", "sell", "--qty", "10", "--market"], "market orders"),
    (["place", "--account", "0x12", "--side", "buy", "--qty", "10", "--market"], "EVM address"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "1.0005 kWh", "--market"],
     "whole number of Wh"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "10", "--price", "1e-19 EEA"],
     "decimals"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "10", "--price", "1e99999999 EEA"],
     "too large"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "9" * 5000, "--price", "1"],
     "energy quantity"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "10", "--price", "1" + "0" * 30 + " base"],
     "order too large"),
    (["place", "--account", SELLER, "--side", "buy", "--qty", "10", "--price", "0.5 base"], "price"),
    (["place", "--account", SELLER, "--side", "hold", "--qty", "10", "--price", "5"], "hold"),
    (["cancel", "77"], "no open order 77"),
    (["cancel", "abc"], "abc"),
    (["amend", "1"], "--price, --qty"),
    (["bogus"], "No such command"),
    (["agents", "fly"], "No such command"),
    (["agents", "set", SELLER], "buy price, a sell price"),
    (["sizing", "--households", "10", "--average-kwh", "nan"], "average kWh"),
    (["sizing", "--households", "10", "--average-kwh", "1", "--headroom", "0.5"], "headroom"),
])
def test_mistakes_are_one_line_errors(env, args, message):
    r = cli_invoke("market", *args, *env)
    # 2 for a usage mistake (a value click's types refuse, an unknown command), else 1
    assert r.exit_code == (2 if "No such command" in message or "Invalid value" in r.stderr else 1)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egs-gw: error:") and message in lines[0], \
        r.stderr
    assert r.stdout == ""


def test_the_console_script_reports_one_line_too(env):
    r = egs_gw("market", "place", "--account", "0x12", "--side", "buy", "--qty", "10",
               "--market", *env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("egs-gw: error: not an EVM address (0x + 40 hex digits): '0x12'")


def test_human_output_shows_eea_prices(env):
    gw(env, "place", "--account", SELLER, "--side", "sell", "--qty", "300", "--price", "0.61 EEA")
    r = cli_invoke("market", "quote", *env)
    assert r.exit_code == 0 and "best ask 0.61" in r.output
    r = cli_invoke("market", "book", *env)
    assert "0.61" in r.output and "300" in r.output


# ---- the whitepaper's storage table (7.3) ---------------------------------------------

WHITEPAPER_TABLE = [
    # households, average kWh, battery kWh, total price $ as printed in the whitepaper
    (100, "0.5", 75, 15_000),
    (100, "2", 300, 60_000),
    (100, "4", 600, 120_000),
    (500, "0.5", 375, 75_000),
    (500, "2", 1500, 250_000),  # printed 250.000 $: 1500 kWh × 200 $/kWh is 300.000 $
    (500, "4", 3000, 500_000),  # printed 500.000 $: 3000 kWh × 200 $/kWh is 600.000 $
]


def test_sizing_reproduces_the_whitepaper_battery_sizes_and_prices():
    for households, avg, battery_kwh, printed in WHITEPAPER_TABLE:
        row = sizing.storage_row(households, avg)
        assert row["battery_kwh"] == battery_kwh
        # The text's own rule (200 $ per kWh of capacity) gives the price of each row;
        # two printed figures of the 500-household group do not follow it.
        assert row["cost"] == battery_kwh * 200
        if (households, avg) not in ((500, "2"), (500, "4")):
            assert row["cost"] == printed
        assert row["cost_per_average_kwh"] == 300  # "around 300 $" per average stored kWh
    # 30 m² is one 40 ft container (800 kWh): enough for every 100-household row.
    assert {sizing.storage_row(100, a)["area_sqm"] for a in ("0.5", "2", "4")} == {30}


def test_bmax_formula_from_the_whitepaper():
    # C_u = 0.5 × B_max × 300 $/kWh = B_max × 150 $/kWh  =>  B_max = C_u × kWh / 150 $
    assert sizing.bmax_kwh(150) == 1
    assert sizing.bmax_kwh(600) == 4
    assert sizing.bmax_wh(100) == 666  # 0.666… kWh, rounded down to whole Wh
    assert sizing.bmax_kwh(600, price_per_kwh=400) == 2  # a Powerwall at ~400 $/kWh
    with pytest.raises(ValueError):
        sizing.bmax_kwh(0)


def test_sizing_command(env):
    r = gw(env, "sizing", "--households", "100", "--households", "500", "--average-kwh", "0.5",
           "--average-kwh", "2", "--average-kwh", "4", "--target-cost", "600")
    assert [(x["households"], x["battery_kwh"], x["cost"]) for x in r["rows"]] == [
        (h, b, b * 200) for h, _, b, _ in WHITEPAPER_TABLE]
    assert (r["bmax_kwh"], r["bmax_wh"]) == (4, 4000)
    r = gw(env, "sizing", "--households", "20", "--average-kwh", "1.25", "--price-per-kwh", "400",
           "--headroom", "2")
    assert r["rows"][0]["battery_kwh"] == 50 and r["rows"][0]["cost"] == 20_000
    assert "bmax_wh" not in r


def test_agents_list_shows_an_agent_that_no_longer_fits_bmax(env, tmp_path):
    gw(env, "agents", "set", SELLER, "--sell-price", "0.60 EEA")  # thresholds from B_max
    conf = tmp_path / "nocap.toml"
    conf.write_text('[gateway]\ncommunity = "c1"\n[market]\nbmax_wh = 0\n')
    nocap = ["--config", str(conf), *env[2:]]
    (a,) = gw(nocap, "agents", "list")
    assert a["owner"] == SELLER and "sell_above_wh" in a["error"]
    r = cli_invoke("market", "agents", "list", *nocap)
    assert r.exit_code == 0 and "idle" in r.output
    # The market still works, and the agent can be fixed.
    gw(nocap, "place", "--account", BUYER, "--side", "buy", "--qty", "10", "--price", "0.5 EEA")
    gw(nocap, "agents", "set", SELLER, "--sell-above", "900", "--keep", "100")
    (a,) = gw(nocap, "agents", "list")
    assert "error" not in a and a["sell_above_wh"] == 900


@pytest.mark.parametrize("args, message", [
    (["--average-kwh", "1e999999999"], "average kWh"),  # used to hang building 10**1e9
    (["--average-kwh", "1", "--headroom", "1e-999999999"], "headroom"),
    (["--average-kwh", "1", "--target-cost", "9" * 100], "target cost"),
    (["--average-kwh", "1e99999"], "average kWh"),
    (["--average-kwh", "1", "--price-per-kwh", "1/0"], "price per kWh"),
])
def test_sizing_refuses_hostile_numbers_quickly(env, args, message):
    r = cli_invoke("market", "sizing", "--households", "10", *args, *env)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("egs-gw: error:") and message in r.stderr, r.stderr


def test_sizing_accepts_ratios_and_refuses_absurd_households(env):
    r = gw(env, "sizing", "--households", "3", "--average-kwh", "2/3", "--headroom", "3/2")
    assert r["rows"][0]["battery_kwh"] == 3
    r = cli_invoke("market", "sizing", "--households", str(10**30), "--average-kwh", "1", *env)
    assert r.exit_code == 2 and "households" in r.stderr     # a usage mistake
    with pytest.raises(ValueError, match="households"):
        sizing.storage_row(10**30, "1")
