"""A whole community in emulation for one simulated day: what `make demo` runs.

Every part is the real one, started the way an operator would start it (docs/demo.md,
"What runs"): the stack of sim/stack.py (Anvil with EEA and WATT, the secured mosquitto,
`egs-gw run`), one MicroPython process per household running the real firmware,
provisioned over its console, an emulated meter each (sim/households.py), EEA deposits,
market agents, the charge park (sim/park.py), and at 40 % of the day the attacker of
sim/tamper.py. One clock for every process (gateway/clock.py): the day runs in
`24 h / speed` real time and lies in the past, so no check against the real clock is
confused. How the day ends before the report (sim/report.py) and the invariants
(sim/invariants.py) read what is left: docs/demo.md, "The end of the day".

Everything started here is on the stack's stop list and is stopped on the way out (normal
end, error, Ctrl-C, SIGTERM) in reverse order of its start.
"""
import json
import os
import random
import sqlite3
import time
from pathlib import Path

from gateway import clock
from gateway.units import EEA
from sim import invariants, park, tamper
from sim.households import BMAX_WH, Household, meter_for
from sim.profiles import Weather
from sim.services import free_port
from sim.stack import QUARTER_S, Stack

COMMUNITY = "demo"
PASSWORD = "demo ledger keystore password"

# Prices in EEA per kWh (the market's unit), in the range the agents trade at.
FALLBACK_PRICE = "0.09 EEA"      # [ocpp] price_per_kwh: energy the market cannot supply
STATION_FEE = "0.02 EEA"         # per kWh, to the station owner
COMMISSION_RATE = 2 * 10**14     # EEA base units per kWh stored per interval (0.0002 EEA)
EV_DEPOSIT = 25 * EEA            # each EV driver's prepayment


def eea_text(base_units):
    return f"{base_units / EEA:.4f} EEA"


def _restore_environment(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


class Community:
    """Set up, run and stop one community; `run()` returns the facts the report needs."""

    def __init__(self, opts, say=print):
        self.opts = opts
        self.say = say
        self.out = opts.out.resolve()
        self.rnd = random.Random(opts.seed)
        self.stack = Stack(self.out, COMMUNITY, PASSWORD)
        address = self.stack.address
        self.weather = Weather(self.rnd)
        self.households = [Household(i, self.rnd, address) for i in range(opts.households)]
        if opts.chargers:
            self.households.append(Household(opts.households, self.rnd, address,
                                             carport_for=opts.chargers))
        self.day = day_window(opts)
        self.meters = {}
        self.devices = {}
        self.park = None
        self.injected = {}
        self.ended = {}                # device id -> meter switched off (after its last reading)
        self.samples = []              # (sim time, watt supply, trades, readings)
        self.facts = {}
        self.interrupted = False
        self.storage = [(address("storage-north"), 60_000), (address("storage-south"), 40_000)]
        self.chargers = park.plan(opts.chargers, address)

    # -- life cycle --------------------------------------------------------------------
    def stop(self):
        return self.stack.stop()

    def run(self, progress=None):
        """Set up, simulate the day, finish. Always stops everything it started."""
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.iterdir()):
            raise RuntimeError(f"{self.out} is not empty: give --out a new directory")
        # The day's clock goes into this process's environment (the in-process emulators
        # and every child read it); put it back at the end so a caller that goes on, such
        # as the test suite, is back on the wall clock.
        saved = {clock.ENV: os.environ.get(clock.ENV)}
        self.stack.on_stop("environment", lambda: _restore_environment(saved))
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
        o, stack = self.opts, self.stack
        self.say(f"community '{COMMUNITY}': {o.households} households, {o.chargers} chargers, "
                 f"{o.hours:g} h from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.day[0]))} "
                 f"UTC at {o.speed:g}x; output in {self.out}")
        stack.start_anvil(persist=True)
        self._write_config()
        stack.create_ledger_key()
        stack.deploy()
        self.say(f"  chain: Anvil on {stack.anvil.url}; WATT {stack.deployment['watt']}, "
                 f"EEA {stack.deployment['eea']}")
        self._provision_devices()
        stack.start_broker()
        self.say(f"  broker: mosquitto on {stack.broker_host}:{stack.broker_port}, "
                 f"{len(stack.broker_summary['devices'])} device users + the gateway, "
                 f"ACL per device")
        for owner, cap in self.storage:
            stack.gw("ledger", "storage", "set", owner, cap)
        for ch in self.chargers:
            stack.gw("charger", "add", "--id", ch["id"], "--password", ch["password"],
                     "--owner", ch["owner"], "--fee", STATION_FEE, "--meter-key",
                     ch["meter_pub"])
            for tag, driver in zip(ch["tags"], ch["drivers"], strict=True):
                stack.gw("account", "add", "--id-tag", tag, "--address", driver)
        self._deposits()
        self.facts["drained"] = stack.drain_outbox(always=True)
        # the day's clock, for this process and every process started from now on
        lead = 3.0
        os.environ[clock.ENV] = clock.make(self.day[0], o.speed, time.time() + lead)
        real_start = time.time() + lead
        for h in self.households:
            stack.gw(*h.agent_args())
        stack.start_gateway()
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

            self.park = park.ChargerPark(stack.ocpp_url, self.chargers, self.rnd, self.day,
                                         o.speed, o.charger_kw)
            stack.on_stop("chargers", self.park.stop)
            self.park.start()
        self.say(f"  running: gateway pid {stack.gateway.proc.pid}, {len(self.devices)} devices "
                 f"(MicroPython), {len(self.meters)} meters, {len(self.chargers)} chargers")

    def _write_config(self):
        self.stack.write_config(
            ["ledger", "ocpp", "market"],
            # simulated seconds: 600 s at 720x is under a second of real time
            intervals={"tick_s": 0.25, "grace_s": 600},
            ledger={"grace_s": 600, "tick_s": 0.25, "commission_rate": COMMISSION_RATE},
            ocpp={"price_per_kwh": FALLBACK_PRICE, "command_poll_s": 0.5,
                  # a real second is 12 simulated minutes: queueing delays must not make a
                  # live StartTransaction look like one queued offline
                  "offline_after_s": 3600},
            market={"bmax_wh": BMAX_WH, "poll_s": 0.25, "settle_delay_s": 0})

    def _provision_devices(self):
        """Each device boots unprovisioned and is configured over its console with the
        firmware's provisioning protocol (hello, provision, pubkey): its key is made on the
        device and only the public key comes back. Then it is registered."""
        from protocol import p256
        from sim.device import DeviceProcess

        stack = self.stack
        for h in self.households:
            h.meter_port = free_port()
            dev = DeviceProcess(self.out / "devices" / h.id, heapsize=self.opts.heapsize)
            stack.on_stop(f"device {h.id}", dev.stop)
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
                "broker": {"host": stack.broker_host, "port": stack.broker_port, "tls": False},
                "mqtt": {"username": h.id, "password": stack.credential(h.id),
                         "keepalive_s": 10, "backoff_max_s": 1},
                "meter": meter, "interval_s": self.opts.reading_interval,
                "status_interval_s": 30, "ack_timeout_s": 5}, timeout=60)
            if not reply.get("ok"):
                raise RuntimeError(f"{h.id}: provisioning refused: {reply}")
            pub = dev.request({"cmd": "pubkey"})["pubkey"]
            if pub != reply["pubkey"]:
                raise RuntimeError(f"{h.id}: the device reported two public keys")
            h.pubkey = pub
            stack.gw("device", "add", "--id", h.id, "--pubkey", pub, "--meter-serial", h.serial,
                     "--account", h.account)
        for ch in self.chargers:
            ch["meter_secret"] = p256.generate_secret()
            ch["meter_pub"] = p256.public_key(ch["meter_secret"]).hex()
        self.say(f"  provisioned {len(self.households)} devices over their consoles "
                 f"(keys made on the devices) and registered them")

    def _deposits(self):
        """Prepaid EEA into every household's and EV driver's escrow on chain."""
        wanted = [(h.account, h.deposit) for h in self.households]
        for ch in self.chargers:
            wanted += [(driver, EV_DEPOSIT) for driver in ch["drivers"]]
        self.stack.deposit(wanted)
        self.deposits = wanted
        self.say(f"  deposits: {eea_text(sum(a for _, a in wanted))} into {len(wanted)} accounts' "
                 f"escrow on chain")

    def _start_meters(self):
        for h in self.households:
            m = meter_for(h, self.weather, tcp=("127.0.0.1", h.meter_port))
            self.stack.on_stop(f"meter {h.id}", m.stop)
            m.start()
            self.meters[h.id] = m

    # -- the day -------------------------------------------------------------------------
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
                    conn = self.stack.db()
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
                    self.injected = tamper.inject(conn, self.stack) or {}
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
        gateway = self.stack.gateway
        if not gateway.alive:
            raise RuntimeError(f"the gateway died (exit {gateway.proc.returncode}):\n"
                               + self.stack.tail("gateway.log"))
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

    # -- the end of the day ------------------------------------------------------------------
    def _finish(self):
        """The end of the day: EVs still charging leave; the gateway runs until every
        interval of the day and every trade is settled and the outbox is on chain, then
        stops (SIGTERM); what it queued in the meantime is carried to the chain by the
        ledger worker alone. Then `egs-gw ledger reconcile`."""
        stack = self.stack
        self.say("  the day is over: meters off, EVs gone; settling the last intervals")
        if self.park is not None:
            self.park.stop()
            self.facts["ev_arrivals"] = self.park.arrivals
            self.facts["ev_refused"] = self.park.refused
            if self.park.error is not None:
                raise RuntimeError(f"the charge points failed: {self.park.error!r}")
        self.facts["device_status"] = self._wait_acknowledged()
        self._wait_settled()
        self.facts["gateway_stop_sim"] = clock.now()
        stack.gateway.stop(timeout=30)
        conn = stack.db()
        try:
            snap = self.snapshot(conn)
            self.samples.append((snap["sim"], snap["watt_supply"], snap["trades"], snap["readings"]))
        finally:
            conn.close()
        self.facts["gateway_exit"] = stack.gateway.proc.returncode
        self.facts["drained"] = stack.drain_outbox()
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
        self.facts["chain_settlements"] = invariants.settlements_on_chain(stack)
        self.facts["reconcile"] = stack.gw("ledger", "reconcile", check=False)
        if "exit_code" in self.facts["reconcile"]:
            out = self.facts["reconcile"]["stdout"]
            try:
                self.facts["reconcile"] = dict(json.loads(out), exit_code=1)
            except ValueError:
                pass

    def _wait_acknowledged(self, timeout=60):
        """Every device: what it signed is acknowledged (its meter is off, so nothing new).
        → {device: its final status}"""
        final = {}
        deadline = time.monotonic() + timeout
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
        return final

    def _wait_settled(self, timeout=120):
        """The gateway: every interval of the day and every trade settled, no session
        active, the outbox on chain."""
        end = self.day[1]
        conn = self.stack.db()
        try:
            deadline = time.monotonic() + timeout
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
