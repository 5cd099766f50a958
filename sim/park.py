"""The demo's charge park: OCPP charge points with OCMF-signed meters, and the EVs that use them.

`plan()` lays the park out (charger ids and passwords, station owners, two EV drivers per
charger with their idTags); ChargerPark runs the charge points of sim/charger.py on an
event loop in a thread of its own, and on each one EVs that arrive during the day
(08:00-21:00 simulated), charge at the lower of their and the charger's power on the
shared clock (gateway/clock.py), and leave when full or when the day ends.
"""
import asyncio
import contextlib
import random
import threading

from gateway import clock

EV_OPEN_S, EV_CLOSE_S = 8 * 3600, 21 * 3600   # EVs arrive between 08:00 and 21:00


def plan(n, address):
    """n chargers: [{id, password, owner, tags, drivers}], drivers[k] paying for tags[k]."""
    chargers = []
    for i in range(n):
        cid = f"CP{i + 1}"
        chargers.append({"id": cid, "password": f"demo-charger-{cid}-secret",
                         "owner": address(f"station-owner-{i % 2 + 1}"),
                         "tags": [f"EV-{cid}-{k}" for k in (1, 2)],
                         "drivers": [address(f"ev-driver-{cid}-{k}") for k in (1, 2)]})
    return chargers


class ChargerPark:
    """The charge points and their EVs, on an event loop in a thread of their own.

    chargers: plan()'s entries, each with its "meter_secret"; day: (start, end) epoch
    seconds of the simulated day; speed: simulated seconds per real second."""

    def __init__(self, url, chargers, rnd, day, speed, charger_kw):
        self.url = url
        self.chargers = chargers
        self.rnd = rnd
        self.day = day
        self.speed = speed
        self.charger_kw = charger_kw
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

        for ch in self.chargers:
            cp = SimChargePoint(self.url, ch["id"], password=ch["password"], connectors=1,
                                sign=True, meter_secret=ch["meter_secret"],
                                connector_max_kw=self.charger_kw,
                                register_wh=self.rnd.randrange(1_000_000, 5_000_000))
            self.points.append(cp)
            await cp.start()
        try:
            for cp in self.points:
                await cp.wait_connected(30)
            self.ready.set()
            await asyncio.gather(*(self._serve(cp, ch["tags"], random.Random(self.rnd.random()))
                                   for cp, ch in zip(self.points, self.chargers, strict=True)))
            for cp in self.points:
                with contextlib.suppress(TimeoutError):
                    await cp.wait_idle(30)
        finally:
            for cp in self.points:
                await cp.close()

    async def _serve(self, cp, tags, rnd):
        """EVs arrive (08:00–21:00 simulated), charge at their power, leave when full or at
        the day's end; energy follows the simulated time that passed."""
        from sim.charger import EV

        day_start, day_end = self.day
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
            await asyncio.sleep(step / self.speed)
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
