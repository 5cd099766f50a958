"""A whole community in emulation: `make demo` runs one simulated day of it.

Every part is the real one, started the way an operator would start it:

  Anvil (state file in the output dir) with EEA and WATT deployed by `egs-gw ledger deploy`;
  mosquitto with the secured configuration of `egs-gw broker config` (a user and an ACL per
  device); `egs-gw run` as a subprocess (ingest, intervals, ledger, OCPP central system and
  market); one MicroPython process per household running the real firmware, provisioned
  over its console with the firmware's provisioning protocol and registered with
  `egs-gw device add`; emulated Modbus meters of mixed models (sdm630, sdm120, sdm72,
  abb_b23, ddsu666) over RTU-over-TCP with PV and household load profiles; EEA deposited
  into each account's escrow on chain (`depositFor`); zero-intelligence market agents with
  varied target prices (`egs-gw market agents set`); OCPP charge points (sim/charger.py)
  with OCMF-signed meters, registered with `egs-gw charger add`, and EVs that arrive,
  charge, and pay the energy their session bought at the market.

Time: one clock for every process (gateway/clock.py): EGS_CLOCK is set before the gateway
and the devices start, so a 24-hour day runs in `24 h / speed` real time. The day lies in
the past (it ends at least an hour before the real time), so no check that compares with
the real clock is ever confused.

The end of the day: when a device's reading at the day's end is stored, its meter is
switched off (it answers with Modbus exceptions: a device signs nothing from a meter in
fault), so the number of readings each device signed is final; EVs still charging leave;
the gateway runs until every interval of the day and every trade is settled and the
outbox is on chain, then stops (SIGTERM); what it queued in the meantime is carried to
the chain by the ledger worker alone. Then `egs-gw ledger reconcile` and the report.

Everything started here is stopped on the way out (normal end, error, Ctrl-C, SIGTERM):
child processes run in their own process groups (sim.services.Service) and are stopped
in reverse order of their start.
"""
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from gateway import clock
from sim.gwcli import egs_gw, toml_text
from sim.services import ANVIL_KEYS, ROOT, Anvil, Mosquitto, Service, StopList, free_port, wait_port

COMMUNITY = "demo"
MODELS = ("sdm630", "sdm120", "sdm72", "abb_b23", "ddsu666")
QUARTER_S = 900
EEA = 10**18
PASSWORD = "demo ledger keystore password"

# Prices in EEA per kWh (the market's unit), in the range the agents trade at.
FALLBACK_PRICE = "0.09 EEA"      # [ocpp] price_per_kwh: energy the market cannot supply
STATION_FEE = "0.02 EEA"         # per kWh, to the station owner
COMMISSION_RATE = 2 * 10**14     # EEA base units per kWh stored per interval (0.0002 EEA)
BMAX_WH = 10_000
EV_OPEN_S, EV_CLOSE_S = 8 * 3600, 21 * 3600   # EVs arrive between 08:00 and 21:00


def address(label):
    """A deterministic account address for a role in the community."""
    from eth_utils import keccak

    return "0x" + keccak(text=f"egs-demo-{label}")[-20:].hex()


def eea_text(base_units):
    return f"{base_units / EEA:.4f} EEA"


# ---------------------------------------------------------------- the plan

def _restore_environment(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class Household:
    """One household (or the charging car park): its meter, profile, account and agent."""

    def __init__(self, index, rnd, carport_for=0):
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
    from sim.meter import household_w

    return h.load_scale * household_w((t - h.load_shift_s) % 86400)


def pv_now_w(h, weather, t):
    from sim.meter import pv_w

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


def _meter_class():
    from sim.meter import MeterEmulator

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


class Options:
    def __init__(self, households=20, chargers=4, hours=24.0, speed=720.0, out="demo-out",
                 seed=1, start_hour=0.0, reading_interval=300.0, heapsize="100K",
                 tamper=True, charger_kw=22.0):
        # `not a <= x <= b` is also true for NaN, which click's FloatRange lets through
        if households < 1:
            raise ValueError("--households must be at least 1")
        if chargers < 0:
            raise ValueError("--chargers must not be negative")
        if not 0 < hours <= 72:
            raise ValueError("--hours must be between 0 and 72")
        if not 1 <= speed <= 5000:
            raise ValueError("--speed must be between 1 and 5000")
        if not 0 <= start_hour < 24:
            raise ValueError("--start-hour must be between 0 and 24")
        # the firmware reads at multiples of the interval and at every quarter hour, so an
        # interval must divide 900 s or be at least 900 s (up to the firmware's one day)
        if not (0.01 <= reading_interval <= 86400
                and (reading_interval >= QUARTER_S or QUARTER_S % reading_interval == 0)):
            raise ValueError("--reading-interval must divide 900 s, or be 900 s to 86400 s")
        self.households = households
        self.chargers = chargers
        self.hours = hours
        self.speed = speed
        self.out = Path(out)
        self.seed = seed
        self.start_hour = start_hour
        self.reading_interval = reading_interval
        self.heapsize = heapsize
        self.tamper = tamper
        if not 1 <= charger_kw <= 350:
            raise ValueError("--charger-kw must be between 1 and 350")
        self.charger_kw = charger_kw


def day_window(opts, now=None):
    """(start, end) epoch seconds of the simulated day: at start_hour of the latest date for
    which the whole day ends at least an hour before `now` (the real time)."""
    now = time.time() if now is None else now
    span = (opts.start_hour + opts.hours) * 3600 + 3600
    midnight = int((now - span) // 86400 * 86400)
    start = midnight + int(opts.start_hour * 3600)
    return start, start + int(opts.hours * 3600)


# ---------------------------------------------------------------- chargers (asyncio thread)

class ChargerPark:
    """The charge points and their EVs, on an event loop in a thread of their own."""

    def __init__(self, community, specs, rnd):
        self.c = community
        self.specs = specs             # [(charger_id, password, secret, [id_tags])]
        self.rnd = rnd
        self.thread = None
        self.loop = None
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.error = None
        self.arrivals = self.refused = 0
        self.points = []

    def start(self):
        self.thread = threading.Thread(target=self._main, name="chargers", daemon=True)
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the charge points did not connect within 60 s")
        if self.error:
            raise self.error
        return self

    def _main(self):
        try:
            asyncio.run(self._run())
        except BaseException as e:  # noqa: BLE001 - reported by stop() / the report
            self.error = e
            self.ready.set()

    async def _run(self):
        from sim.charger import SimChargePoint

        for cid, password, secret, _tags in self.specs:
            cp = SimChargePoint(self.c.ocpp_url, cid, password=password, connectors=1, sign=True,
                                meter_secret=secret, connector_max_kw=self.c.opts.charger_kw,
                                register_wh=self.rnd.randrange(1_000_000, 5_000_000))
            self.points.append(cp)
            await cp.start()
        try:
            for cp in self.points:
                await cp.wait_connected(30)
            self.ready.set()
            await asyncio.gather(*(self._serve(cp, spec[3], random.Random(self.rnd.random()))
                                   for cp, spec in zip(self.points, self.specs, strict=True)))
            for cp in self.points:
                with contextlib.suppress(TimeoutError):
                    await cp.wait_idle(30)
        finally:
            for cp in self.points:
                await cp.close()

    async def _serve(self, cp, tags, rnd):
        """EVs arrive (07:00–21:00 simulated), charge at their power, leave when full or at
        the day's end; energy follows the simulated time that passed."""
        from sim.charger import EV

        day_start, day_end = self.c.day
        step = 300.0                                  # simulated seconds between samples
        conn = cp.connectors[1]

        def in_hours(t):
            """Moved into the hours EVs arrive (08:00-21:00 simulated time of day); the
            first cars of a morning come over its first four hours."""
            midnight, tod = t - t % 86400, t % 86400
            if tod < EV_OPEN_S:
                return midnight + EV_OPEN_S + rnd.uniform(0, 4 * 3600)
            if tod > EV_CLOSE_S:
                return midnight + 86400 + EV_OPEN_S + rnd.uniform(0, 4 * 3600)
            return t

        def next_arrival(after):
            return in_hours(after + min(rnd.expovariate(1 / 5400), 6 * 3600))

        # the first EV once the PV has minted some WATT to buy (an hour in, sooner in short runs)
        span = day_end - day_start
        due = in_hours(day_start + min(3600, span * 0.15) + rnd.uniform(0, min(1800, span * 0.1)))
        last = clock.now()
        while not self.stop_flag.is_set():
            await asyncio.sleep(step / self.c.opts.speed)
            now = clock.now()
            dt, last = now - last, now
            if conn.tx is None:
                if now >= day_end - 1800:
                    break
                if now >= due:
                    ev = EV(battery_kwh=rnd.choice([40, 58, 64, 77]), max_kw=rnd.choice([7.4, 11, 22]),
                            arrival_soc=rnd.uniform(0.45, 0.8), target_soc=0.9,
                            id_tag=rnd.choice(tags))
                    tx = await cp.start_transaction(1, ev.id_tag, ev=ev, authorize=cp.online)
                    self.arrivals += 1
                    if tx is None:
                        self.refused += 1
                        due = next_arrival(now)
                continue
            if conn.tx.id_tag_status not in (None, "Accepted"):
                await cp.stop_transaction(1, reason="DeAuthorized")
                due = next_arrival(now)
                continue
            power = min(conn.max_w, conn.ev.max_w)
            await cp.deliver(1, int(power * dt / 3600), seconds=0, meter_values=True)
            if conn.ev.needed_wh == 0 or now >= day_end:
                await cp.stop_transaction(1)
                due = next_arrival(now)
        if conn.tx is not None:
            await cp.stop_transaction(1, reason="Local")

    def stop(self, timeout=40):
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def alive(self):
        return self.thread is not None and self.thread.is_alive()


# ---------------------------------------------------------------- the community

class Community:
    """Set up, run and stop one community; `run()` returns the facts the report needs."""

    def __init__(self, opts, say=print):
        self.opts = opts
        self.say = say
        self.out = opts.out.resolve()
        self.rnd = random.Random(opts.seed)
        self.weather = Weather(self.rnd)
        self.households = [Household(i, self.rnd) for i in range(opts.households)]
        if opts.chargers:
            self.households.append(Household(opts.households, self.rnd, carport_for=opts.chargers))
        self.day = day_window(opts)
        self._stack = StopList()
        self.meters = {}
        self.devices = {}
        self.park = None
        self.gateway = None
        self.anvil = None
        self.broker = None
        self.injected = {}
        self.ended = {}                # device id -> meter switched off (after its last reading)
        self.samples = []              # (sim time, watt supply, trades, readings)
        self.facts = {}
        self.interrupted = False
        self.db_path = self.out / "gateway.sqlite"
        self.config_path = self.out / "gateway.toml"
        self.broker_dir = self.out / "broker"
        self.broker_port = free_port()
        self.ocpp_port = free_port()
        self.pool = address("energy-pool")
        self.education = address("education-pool")
        self.network = address("network-pool")
        self.storage = [(address("storage-north"), 60_000), (address("storage-south"), 40_000)]
        self.chargers = []
        for i in range(opts.chargers):
            cid = f"CP{i + 1}"
            self.chargers.append({"id": cid, "password": f"demo-charger-{cid}-secret",
                                  "owner": address(f"station-owner-{i % 2 + 1}"),
                                  "tags": [f"EV-{cid}-{k}" for k in (1, 2)]})

    # -- life cycle --------------------------------------------------------------------
    def _started(self, name, stop):
        self._stack.add(name, stop)

    def stop(self):
        return self._stack.stop_all()

    def run(self, progress=None):
        """Set up, simulate the day, finish. Always stops everything it started."""
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.iterdir()):
            raise RuntimeError(f"{self.out} is not empty: give --out a new directory")
        # The day's clock and the demo's ledger key go into this process's environment
        # (the in-process emulators and every child read them); put it back at the end so
        # a caller that goes on, such as the test suite, is back on the wall clock.
        saved = {k: os.environ.get(k) for k in (clock.ENV, "EGS_DEMO_LEDGER_KEY")}
        self._started("environment", lambda: _restore_environment(saved))
        try:
            t0 = time.monotonic()
            self._setup()
            self.facts["setup_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            self._simulate(progress)
            self.facts["day_s"] = time.monotonic() - t1
            t2 = time.monotonic()
            self._finish()
            self.facts["finish_s"] = time.monotonic() - t2
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            errors = self.stop()
            self.facts["stop_errors"] = errors
        return self.facts

    # -- setup ---------------------------------------------------------------------------
    def _setup(self):
        o = self.opts
        self.say(f"community '{COMMUNITY}': {o.households} households, {o.chargers} chargers, "
                 f"{o.hours:g} h from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.day[0]))} "
                 f"UTC at {o.speed:g}x; output in {self.out}")
        self.anvil = Anvil(self.out / "anvil", state_file=self.out / "anvil" / "state.json")
        self._started("anvil", self.anvil.stop)
        self.anvil.start()
        self._write_config()
        self.gw("ledger", "key", "new", "--private-key-env", "EGS_DEMO_LEDGER_KEY")
        self.deployment = self.gw("ledger", "deploy")
        self.say(f"  chain: Anvil on {self.anvil.url}; WATT {self.deployment['watt']}, "
                 f"EEA {self.deployment['eea']}")
        self._provision_devices()
        self._broker()
        for owner, cap in self.storage:
            self.gw("ledger", "storage", "set", owner, cap)
        for ch in self.chargers:
            self.gw("charger", "add", "--id", ch["id"], "--password", ch["password"],
                    "--owner", ch["owner"], "--fee", STATION_FEE, "--meter-key",
                    ch["meter_pub"])
            for k, tag in enumerate(ch["tags"]):
                self.gw("account", "add", "--id-tag", tag, "--address",
                        address(f"ev-driver-{ch['id']}-{k + 1}"))
        self._deposits()
        self._drain_outbox(always=True)
        # the day's clock, for this process and every process started from now on
        lead = 3.0
        os.environ[clock.ENV] = clock.make(self.day[0], o.speed, time.time() + lead)
        real_start = time.time() + lead
        self._agents()
        self.gateway = Service([sys.executable, "-m", "gateway.service", "--config", self.config_path],
                               log_path=self.out / "gateway.log",
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._started("gateway", lambda: self.gateway.stop(timeout=30))
        self.gateway.start()
        self._wait_gateway()
        self._start_meters()
        # the devices boot just before the day starts: their first reading is its first
        while time.time() < real_start - 0.3:
            time.sleep(0.05)
        from sim.device import firmware_env

        for dev in self.devices.values():
            dev.env = firmware_env()
            reply = dev.request({"cmd": "reboot"})
            if not reply.get("ok"):
                raise RuntimeError(f"{dev.state_dir.name}: reboot refused: {reply}")
        if self.chargers:
            from protocol import p256  # noqa: F401 - chargers sign with it

            self.park = ChargerPark(self, [(c["id"], c["password"], c["meter_secret"], c["tags"])
                                           for c in self.chargers], self.rnd)
            self._started("chargers", self.park.stop)
            self.park.start()
        self.say(f"  running: gateway pid {self.gateway.proc.pid}, {len(self.devices)} devices "
                 f"(MicroPython), {len(self.meters)} meters, {len(self.chargers)} chargers")

    def _write_config(self):
        from eth_account import Account

        company = Account.from_key(ANVIL_KEYS[1]).address.lower()
        self.company_key = ANVIL_KEYS[1]
        pw = self.out / "ledger-password"
        pw.write_text(PASSWORD + "\n")
        os.chmod(pw, 0o600)
        os.environ["EGS_DEMO_LEDGER_KEY"] = ANVIL_KEYS[0]    # Anvil's first test account pays gas
        sections = {
            "gateway": {"community": COMMUNITY, "components": ["ledger", "ocpp", "market"]},
            "store": {"db": str(self.db_path)},
            "mqtt": {"broker": f"127.0.0.1:{self.broker_port}", "user": "egs-gateway",
                     "password_file": str(self.broker_dir / "credentials" / "egs-gateway.password"),
                     "keepalive": 10, "reconnect_max_s": 1.0},
            # a gap is filled by the device, never given up: a lost reading fails the demo
            "ingest": {"resend_cooldown_s": 1.0, "gap_give_up": 0},
            # simulated seconds: 600 s at 720x is under a second of real time
            "intervals": {"tick_s": 0.25, "grace_s": 600},
            "broker": {"dir": str(self.broker_dir), "host": "127.0.0.1", "port": self.broker_port},
            "ledger": {
                "rpc_url": self.anvil.url, "chain_id": 31337,
                "keystore": str(self.out / "ledger-key.json"), "password_file": str(pw),
                "deployment": str(self.out / "ledger-deployment.json"),
                # Anvil mines on every transaction: nothing is ever reorganised
                "confirmations": 0, "grace_s": 600, "tick_s": 0.25,
                "commission_rate": COMMISSION_RATE,
                "education_pool": self.education, "network_pool": self.network,
                "distribution": {"open_issue": address("open-issue"), "company": company,
                                 "foundation": address("foundation"),
                                 "founding_team": address("founding-team"),
                                 "contribution": address("contribution")},
            },
            "ocpp": {"enabled": True, "listen": f"127.0.0.1:{self.ocpp_port}",
                     "price_per_kwh": FALLBACK_PRICE, "min_deposit_eea": "1 EEA",
                     "energy_pool": self.pool, "command_poll_s": 0.5,
                     # a real second is 12 simulated minutes: queueing delays must not make a
                     # live StartTransaction look like one queued offline
                     "offline_after_s": 3600},
            "market": {"bmax_wh": BMAX_WH, "poll_s": 0.25, "settle_delay_s": 0},
        }
        self.config_path.write_text(toml_text(sections))

    def gw(self, *args, check=True):
        return egs_gw(self.config_path, *args, check=check)

    def _provision_devices(self):
        """Each device boots unprovisioned and is configured over its console with the
        firmware's provisioning protocol (hello, provision, pubkey): its key is made on the
        device and only the public key comes back. Then it is registered."""
        from gateway.devices import broker as broker_mod
        from sim.device import DeviceProcess

        self.broker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for h in self.households:
            h.meter_port = free_port()
            dev = DeviceProcess(self.out / "devices" / h.id, heapsize=self.opts.heapsize)
            self._started(f"device {h.id}", dev.stop)
            dev.start()
            self.devices[h.id] = dev
        for h in self.households:
            dev = self.devices[h.id]
            hello = dev.request({"cmd": "hello"}, timeout=60)
            if not hello.get("ok") or hello.get("provisioned"):
                raise RuntimeError(f"{h.id}: unexpected hello {hello}")
            meter = {"model": h.model, "unit": 1, "port": f"tcp:127.0.0.1:{h.meter_port}",
                     "timeout_ms": 1000, "retries": 2}
            if h.model == "ddsu666":         # no serial register: the installer types it in
                meter["serial"] = str(h.serial)
            reply = dev.request({
                "cmd": "provision", "device_id": h.id, "community": COMMUNITY,
                "broker": {"host": "127.0.0.1", "port": self.broker_port, "tls": False},
                "mqtt": {"username": h.id, "password": broker_mod.credential(self.broker_dir, h.id),
                         "keepalive_s": 10, "backoff_max_s": 1},
                "meter": meter, "interval_s": self.opts.reading_interval,
                "status_interval_s": 30, "ack_timeout_s": 5}, timeout=60)
            if not reply.get("ok"):
                raise RuntimeError(f"{h.id}: provisioning refused: {reply}")
            pub = dev.request({"cmd": "pubkey"})["pubkey"]
            if pub != reply["pubkey"]:
                raise RuntimeError(f"{h.id}: the device reported two public keys")
            h.pubkey = pub
            self.gw("device", "add", "--id", h.id, "--pubkey", pub, "--meter-serial", h.serial,
                    "--account", h.account)
        from protocol import p256

        for ch in self.chargers:
            ch["meter_secret"] = p256.generate_secret()
            ch["meter_pub"] = p256.public_key(ch["meter_secret"]).hex()
        self.say(f"  provisioned {len(self.households)} devices over their consoles "
                 f"(keys made on the devices) and registered them")

    def _broker(self):
        args = ["broker", "config", "--out", self.broker_dir, "--community", COMMUNITY,
                "--host", "127.0.0.1", "--port", self.broker_port]
        if os.geteuid() == 0:
            args += ["--run-as", "root"]
        self.broker_summary = self.gw(*args)
        self.broker = Mosquitto(self.broker_dir, port=self.broker_port,
                                config_text=(self.broker_dir / "mosquitto.conf").read_text())
        self._started("mosquitto", self.broker.stop)
        self.broker.start()
        self.say(f"  broker: mosquitto on 127.0.0.1:{self.broker_port}, "
                 f"{len(self.broker_summary['devices'])} device users + the gateway, ACL per device")

    def _chain(self):
        from gateway.ledger.chain import Chain

        return Chain(self.anvil.url, 31337, json.loads(
            (self.out / "ledger-deployment.json").read_text()))

    def _deposits(self):
        """Prepaid EEA: the company's holding pays into every account's escrow on chain
        (`approve` once, then `depositFor` each); the ledger worker books the Deposited events."""
        from eth_account import Account
        from web3 import Web3

        wanted = [(h.account, h.deposit) for h in self.households]
        for ch in self.chargers:
            for k in (1, 2):
                wanted.append((address(f"ev-driver-{ch['id']}-{k}"), 25 * EEA))
        chain = self._chain()
        payer = Account.from_key(self.company_key)
        w3 = chain.w3
        nonce = w3.eth.get_transaction_count(payer.address, "pending")
        calls = [chain.eea.functions.approve(chain.watt.address, sum(a for _, a in wanted))]
        calls += [chain.watt.functions.depositFor(Web3.to_checksum_address(acct), amount)
                  for acct, amount in wanted]
        hashes = []
        for fn in calls:
            tx = fn.build_transaction({"from": payer.address, "chainId": 31337, "nonce": nonce,
                                       "gas": 200_000})
            nonce += 1
            hashes.append(w3.eth.send_raw_transaction(payer.sign_transaction(tx).raw_transaction))
        for h in hashes:
            receipt = w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.05)
            if receipt["status"] != 1:
                raise RuntimeError(f"deposit transaction {h.hex()} reverted")
        self.deposits = wanted
        self.say(f"  deposits: {eea_text(sum(a for _, a in wanted))} into {len(wanted)} accounts' "
                 f"escrow on chain")

    def _agents(self):
        for h in self.households:
            a = h.agent
            args = ["market", "agents", "set", h.account]
            if "sell_price" in a:
                args += ["--sell-price", a["sell_price"], "--sell-above", a["sell_above"],
                         "--keep", a["keep"]]
            if "buy_price" in a:
                args += ["--buy-price", a["buy_price"], "--buy-below", a["buy_below"],
                         "--buy-up-to", a["buy_up_to"]]
            self.gw(*args)

    def _wait_gateway(self, timeout=60):
        from gateway.ingest import store

        deadline = time.monotonic() + timeout
        while True:
            if not self.gateway.alive:
                raise RuntimeError("egs-gw run exited:\n" + self._tail("gateway.log"))
            try:
                conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=1)
                try:
                    value, _ = store.get_state(conn, "service")
                finally:
                    conn.close()
            except sqlite3.Error:
                value = None
            if value and value.get("pid") == self.gateway.proc.pid and value.get("connected"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not connect to the broker:\n"
                                   + self._tail("gateway.log"))
            time.sleep(0.1)
        wait_port(self.ocpp_port, timeout=30, proc=self.gateway.proc)

    def _start_meters(self):
        cls = _meter_class()
        for h in self.households:
            m = cls(h, self.weather, tcp=("127.0.0.1", h.meter_port))
            self._started(f"meter {h.id}", m.stop)
            m.start()
            self.meters[h.id] = m

    @property
    def ocpp_url(self):
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    def _tail(self, name, n=3000):
        try:
            return (self.out / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- the day -------------------------------------------------------------------------
    def db(self):
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        return conn

    def snapshot(self, conn):
        """What the progress view shows, read from the gateway's store."""
        q = lambda sql, *a: conn.execute(sql, a).fetchone()[0]
        outbox = dict(conn.execute("SELECT state, count(*) FROM ledger_outbox GROUP BY state").fetchall())
        sessions = dict(conn.execute("SELECT state, count(*) FROM ocpp_transactions GROUP BY state")
                        .fetchall())
        last = conn.execute("SELECT price FROM market_trades ORDER BY id DESC LIMIT 1").fetchone()
        watt = 0
        for amount, delta in conn.execute(
                "SELECT amount, delta FROM balance_entries WHERE asset='WATT'"):
            watt += int(amount) if amount is not None else int(delta)
        return {
            "sim": clock.now(),
            "readings": q("SELECT count(*) FROM readings"),
            "quarantine": q("SELECT count(*) FROM quarantine"),
            "events": q("SELECT count(*) FROM security_events"),
            "intervals_settled": q("SELECT count(*) FROM intervals WHERE state='settled'"),
            "intervals_open": q("SELECT count(*) FROM intervals WHERE state='open'"),
            "outbox": outbox,
            "outbox_depth": sum(v for k, v in outbox.items() if k in ("queued", "signed")),
            "trades": q("SELECT count(*) FROM market_trades"),
            "traded_wh": q("SELECT COALESCE(SUM(wh), 0) FROM market_trades"),
            "last_price": int(last[0]) if last else None,
            "open_orders": q("SELECT count(*) FROM market_orders WHERE status='open'"),
            "sessions": sessions,
            "charging": sum(1 for cp in (self.park.points if self.park else [])
                            for c in cp.connectors.values() if c.tx is not None),
            "watt_supply": watt,
            "devices": len(self.devices),
            "ended": len(self.ended),
        }

    def _simulate(self, progress):
        start, end = self.day
        conn = None
        last_sample = 0.0
        tamper_at = start + (end - start) * 0.4
        try:
            while True:
                time.sleep(0.25)
                self._check_alive()
                if conn is None:
                    conn = self.db()
                try:
                    snap = self.snapshot(conn)
                except sqlite3.OperationalError:
                    continue
                if time.monotonic() - last_sample >= 0.5:
                    self.samples.append((snap["sim"], snap["watt_supply"], snap["trades"],
                                         snap["readings"]))
                    last_sample = time.monotonic()
                if progress:
                    progress(self, snap)
                if self.opts.tamper and not self.injected and snap["sim"] >= tamper_at:
                    self._inject(conn)
                if snap["sim"] >= end:
                    self._end_meters(conn)
                    if len(self.ended) == len(self.devices):
                        break
                if snap["sim"] > end + 4 * 3600:
                    missing = sorted(set(self.devices) - set(self.ended))
                    raise RuntimeError(f"devices without a reading at the day's end: {missing}")
        finally:
            if conn is not None:
                conn.close()

    def _check_alive(self):
        if not self.gateway.alive:
            raise RuntimeError(f"the gateway died (exit {self.gateway.proc.returncode}):\n"
                               + self._tail("gateway.log"))
        if self.park is not None and self.park.error is not None:
            raise RuntimeError(f"the charge points failed: {self.park.error!r}")
        for name, dev in self.devices.items():
            if not dev.alive and dev.reboots == 0 and not dev._halted:
                time.sleep(0.5)                 # a reboot in progress is brought back up
                if not dev.alive:
                    raise RuntimeError(f"device {name} died:\n{dev.log_text()[-2000:]}")

    def _end_meters(self, conn):
        """A device whose reading at (or after) the day's end is stored gets its meter
        switched off: from now on it signs nothing, so what it signed is final."""
        end = self.day[1]
        rows = conn.execute("SELECT device_id, MAX(time_epoch) FROM readings GROUP BY device_id")
        for device_id, last in rows:
            if device_id in self.devices and device_id not in self.ended and last >= end:
                self.meters[device_id].set_fault("exception", code=4)
                self.ended[device_id] = clock.now()

    def _inject(self, conn):
        """An attacker with a device's broker credential publishes a record with a raised
        export figure (the signature no longer matches), replays a genuine one, and sends
        a record cut off halfway (bad input: a clear rejection, no crash)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from gateway.devices import broker as broker_mod

        row = conn.execute(
            "SELECT r.device_id, r.seq, r.raw FROM readings r JOIN devices d ON d.id=r.device_id "
            "WHERE r.export_wh > 0 ORDER BY r.id DESC LIMIT 1").fetchone()
        if row is None:
            row = conn.execute("SELECT device_id, seq, raw FROM readings ORDER BY id DESC LIMIT 1"
                               ).fetchone()
        if row is None:
            return
        device, seq, raw = row["device_id"], row["seq"], row["raw"]
        from protocol import ocmf

        rec = ocmf.parse(raw)
        payload = json.loads(rec.payload_bytes)
        for rd in payload["RD"]:
            if rd.get("RI") == "1-0:2.8.0":
                rd["RV"] = round(float(rd["RV"]) + 50.0, 3)      # +50 kWh of "export"
        forged = "OCMF|" + json.dumps(payload, separators=(",", ":")) + "|" + json.dumps(
            rec.signature, separators=(",", ":"))
        truncated = forged[:len(forged) // 2]
        topic = f"egs/v1/{COMMUNITY}/{device}/ocmf"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-intruder")
        client.username_pw_set(device, broker_mod.credential(self.broker_dir, device, create=False))
        client.connect("127.0.0.1", self.broker_port, keepalive=10)
        client.loop_start()
        try:
            for body in (forged, raw, truncated):
                client.publish(topic, body.encode(), qos=1).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()
        self.injected = {"device": device, "seq": seq, "forged": forged, "replayed": raw,
                         "truncated": truncated, "at": clock.now()}

    # -- the end of the day ------------------------------------------------------------------
    def _finish(self):
        end = self.day[1]
        self.say("  the day is over: meters off, EVs gone; settling the last intervals")
        if self.park is not None:
            self.park.stop()
            self.facts["ev_arrivals"] = self.park.arrivals
            self.facts["ev_refused"] = self.park.refused
            if self.park.error is not None:
                raise RuntimeError(f"the charge points failed: {self.park.error!r}")
        # every device: what it signed is acknowledged (its meter is off, so nothing new)
        final = {}
        deadline = time.monotonic() + 60
        for name, dev in self.devices.items():
            while True:
                st = dev.request({"cmd": "status"})
                if st.get("seq") and st.get("seq") == st.get("acked"):
                    final[name] = st
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: readings not acknowledged: seq {st.get('seq')}, "
                                       f"acked {st.get('acked')}")
                time.sleep(0.2)
        self.facts["device_status"] = final
        # the gateway: every interval of the day and every trade settled, the outbox on chain
        conn = self.db()
        try:
            deadline = time.monotonic() + 120
            while True:
                self._check_alive()
                open_iv = conn.execute("SELECT count(*) FROM intervals WHERE state='open' "
                                       "AND end <= ?", (end,)).fetchone()[0]
                unsettled = conn.execute("SELECT count(*) FROM market_trades WHERE settlement_id "
                                         "IS NULL").fetchone()[0]
                active = conn.execute("SELECT count(*) FROM ocpp_transactions WHERE state='active'"
                                      ).fetchone()[0]
                busy = conn.execute("SELECT count(*) FROM ledger_outbox WHERE state NOT IN "
                                    "('confirmed', 'rejected')").fetchone()[0]
                if not (open_iv or unsettled or active or busy):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not settle the day: {open_iv} intervals, "
                                       f"{unsettled} trades, {active} sessions, {busy} intents")
                time.sleep(0.2)
        finally:
            conn.close()
        self.facts["gateway_stop_sim"] = clock.now()
        self.gateway.stop(timeout=30)
        conn = self.db()
        try:
            snap = self.snapshot(conn)
            self.samples.append((snap["sim"], snap["watt_supply"], snap["trades"], snap["readings"]))
        finally:
            conn.close()
        self.facts["gateway_exit"] = self.gateway.proc.returncode
        self._drain_outbox()
        # the devices: stopped, their flash logs read back (the firmware's own code on CPython)
        from firmware.flashlog import FlashLog

        logs = {}
        for name, dev in self.devices.items():
            dev.stop()
            log = FlashLog(str(dev.state_dir / "log"))
            logs[name] = {"last_seq": log.last_seq, "acked": log.acked, "dropped": log.dropped,
                          "torn": log.torn, "starts": dev.starts, "reboots": dev.reboots,
                          "failed": "application failed" in dev.log_text()}
        self.facts["flash"] = logs
        self.facts["chain_settlements"] = self._chain_settlements()
        self.facts["reconcile"] = self.gw("ledger", "reconcile", check=False)
        if "exit_code" in self.facts["reconcile"]:
            out = self.facts["reconcile"]["stdout"]
            try:
                self.facts["reconcile"] = dict(json.loads(out), exit_code=1)
            except ValueError:
                pass

    def _chain_settlements(self):
        """How often each settlement id was applied on chain (the contract's events), for
        the invariant that nothing is applied twice: reconcile only asks whether it was."""
        from collections import Counter

        try:
            chain = self._chain()
            block = chain.block_number()
            seen = Counter()
            for name in ("Settled", "StorageSet", "Withdrawn"):
                for ev in chain.events(chain.watt, name, 0, block):
                    seen["0x" + bytes(ev["args"]["sid"]).hex()] += 1
        except Exception as e:  # noqa: BLE001 - reported as a failed invariant
            return {"error": repr(e)}
        return {"block": block, "events": sum(seen.values()), "ids": len(seen),
                "twice": sorted(sid for sid, n in seen.items() if n > 1)}

    def _drain_outbox(self, timeout=60, always=False):
        """The ledger worker alone (no settlement decided): before the day it books the
        deposits and registers the storage owners; after the gateway stopped, it carries
        what the gateway queued after its last look (commission of the intervals that
        closed while it finished) to the chain."""
        from gateway import config as config_mod
        from gateway import db
        from gateway.ledger import keystore
        from gateway.ledger.chain import Chain
        from gateway.ledger.settings import Settings
        from gateway.ledger.worker import Worker
        from gateway.service import declare_sections

        declare_sections()
        settings = Settings(config_mod.load(self.config_path))
        conn = db.connect(self.db_path)
        try:
            busy = conn.execute("SELECT count(*) FROM ledger_outbox WHERE state NOT IN "
                                "('confirmed', 'rejected')").fetchone()[0]
            self.facts["drained"] = busy
            if not busy and not always:
                return
            account = keystore.load(settings.keystore, keystore.read_password(
                settings.password_file, settings.password_env))
            worker = Worker(conn, Chain.from_settings(settings), account, settings)
            deadline = time.monotonic() + timeout
            worker.step()
            while not worker.idle():
                worker.step()
                if time.monotonic() > deadline:
                    raise RuntimeError("the ledger outbox did not drain")
                time.sleep(0.05)
        finally:
            conn.close()


def install_sigterm():
    """SIGTERM ends the demo like Ctrl-C (everything it started is stopped)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


__all__ = ["ROOT", "Community", "Options", "day_window", "truth_wh"]
