"""Who lives in the demo's community: households drawn from a seed, and their meters.

A Household is the plan for one home (or the chargers' car park): its meter model and
serial, load and PV (sim/profiles.py), starting registers, account, the EEA it deposits
and its market agent's target prices. Everything is drawn from the community's random
generator in a fixed order, so a seed gives the same village every time.
HouseholdMeter is the Modbus meter emulator counting that household's power.
"""
import functools

from gateway.units import EEA
from sim.profiles import load_w, pv_now_w

MODELS = ("sdm630", "sdm120", "sdm72", "abb_b23", "ddsu666")
BMAX_WH = 10_000             # the market's cap on an account's WATT stock ([market] bmax_wh)


class Household:
    """One household (or the charging car park): its meter, profile, account and agent.
    `address(label)` gives a role's account address in the community."""

    def __init__(self, index, rnd, address, carport_for=0):
        self.index = index
        self.id = f"house-{index + 1:02d}"
        self.account = address(self.id)
        self.model = MODELS[index % len(MODELS)]
        # two in three households have PV on the roof
        self.kind = "consumer" if index % 3 == 2 else "prosumer"
        self.pv_peak_w = rnd.randrange(3000, 9001, 100) if self.kind == "prosumer" else 0
        self.load_scale = round(rnd.uniform(0.6, 1.6), 2)
        self.load_shift_s = rnd.randrange(-3600, 3601, 300)
        self.serial = 20_250_000 + index + 1
        self.import_wh = rnd.randrange(1_000_000, 9_000_000)
        self.export_wh = rnd.randrange(0, 4_000_000) if self.kind == "prosumer" else 0
        cents = lambda lo, hi: f"{rnd.randrange(lo, hi + 1) / 1000:.3f} EEA"
        if carport_for:
            # the chargers' car park: a PV canopy whose export mints WATT to the energy pool
            # (the account that buys and burns the sessions' energy), and an agent that keeps
            # a stock of WATT for the sessions the market cannot supply at that moment
            self.id, self.kind, self.model = "carport", "carport", "sdm630"
            self.account = address("energy-pool")
            self.pv_peak_w = min(45_000, 5_000 + 8_000 * carport_for)
            self.load_scale = 0.1
            self.export_wh = rnd.randrange(0, 1_000_000)
            self.agent = {"buy_price": "0.085 EEA", "buy_below": BMAX_WH - 500,
                          "buy_up_to": BMAX_WH}
            self.deposit = 20 * EEA                     # float for the sessions' market buys
        elif self.kind == "prosumer":
            self.agent = {"sell_price": cents(45, 80), "sell_above": rnd.randrange(1000, 3001, 250),
                          "keep": rnd.randrange(200, 801, 100),
                          "buy_price": cents(20, 40), "buy_below": 0, "buy_up_to": 500}
            self.deposit = 2 * EEA
        else:
            self.agent = {"buy_price": cents(50, 90), "buy_below": 0,
                          "buy_up_to": rnd.randrange(2000, 4001, 500)}
            self.deposit = 10 * EEA

    def describe(self):
        pv = f"PV {self.pv_peak_w / 1000:.1f} kWp" if self.pv_peak_w else "no PV"
        return f"{self.id} {self.kind} {self.model} {pv}, load x{self.load_scale}"

    def agent_args(self):
        """`egs-gw market agents set` for this household's agent."""
        a = self.agent
        args = ["market", "agents", "set", self.account]
        if "sell_price" in a:
            args += ["--sell-price", a["sell_price"], "--sell-above", a["sell_above"],
                     "--keep", a["keep"]]
        if "buy_price" in a:
            args += ["--buy-price", a["buy_price"], "--buy-below", a["buy_below"],
                     "--buy-up-to", a["buy_up_to"]]
        return args


def meter_for(household, weather, **kw):
    """The household's meter emulator (sim/meter.py), counting its load minus its PV."""
    return _meter_class()(household, weather, **kw)


@functools.cache
def _meter_class():
    from sim.meter import MeterEmulator  # here: pymodbus is slow to import

    class HouseholdMeter(MeterEmulator):
        """The emulator with this household's load and PV under the village's weather."""

        def __init__(self, household, weather, **kw):
            self.household = household
            self.weather = weather
            super().__init__(household.model, serial_number=household.serial,
                             import_wh=household.import_wh, export_wh=household.export_wh,
                             profile="flat", **kw)

        def power_at(self, t):
            h = self.household
            return round(load_w(h, t) - pv_now_w(h, self.weather, t))

    return HouseholdMeter
