"""How many charge points one central-system process holds with p99 latency < 100 ms.

    .venv/bin/python bench/ocpp_load.py [--quick] [--steps 500,1000,...] [--period 5]

Two servers are measured in the same run, each in its own process: `egs`,
ocpp_cs.server.CentralSystem (Basic auth, schema checks, every MeterValues stored durably,
SQLite synchronous=FULL with group commit, before it is answered), and `bare`, the `ocpp`
library's v16 ChargePoint with the same Core handlers returning canned answers, no
authentication and no persistence (the baseline). The emulated charge points run in this
process: lightweight OCPP-J clients on real websockets, each sending a Heartbeat or a
MeterValues every `--period` seconds (accelerated: a real charger is far slower). N steps
up; the largest N with p99 < 100 ms and no errors is "held" (how each step is measured:
above `run_series`).
"""
import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 5000
LIMIT_MS = 100.0
PASSWORD = "bench-password-1"


def cp_id(i):
    return f"B{i:05d}"


# ------------------------------------------------------------------ servers (child process)

def seed_db(db_path, n):
    from gateway import accounts
    from gateway import db as db_mod
    from gateway.db import transaction
    from ocpp_cs import auth, store
    conn = db_mod.connect(db_path)
    store.init(conn)
    # scrypt n=2**10 here (production default 2**14), so that registering and connecting
    # thousands of chargers does not dominate the run: connection set-up is not measured.
    hashed = auth.hash_password(PASSWORD, n=2**10)  # one hash: every bench charger shares it
    with transaction(conn):
        for i in range(n):
            store.add_charger(conn, cp_id(i), hashed)
            address = store.add_id_tag(conn, f"T{i:05d}")
            accounts.post(conn, [(address, "EEA", 10**18)], "bench")
    conn.close()


async def serve_egs(db_path, port):
    from gateway import config
    from ocpp_cs.server import CentralSystem
    from ocpp_cs.settings import Settings
    section = dict(config.load()["ocpp"])
    section.update({"listen": f"127.0.0.1:{port}", "price_per_kwh": 3 * 10**17,
                    "energy_pool": "0x" + "77" * 20, "min_deposit_eea": 10**17,
                    "heartbeat_interval": 3600})
    cs = CentralSystem(db_path, Settings(section))
    await cs.start()
    print(f"READY {cs.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        print(f"commits {cs.db.commits} operations {cs.db.operations}", file=sys.stderr)
        await cs.stop()


async def serve_bare(port):
    from datetime import datetime

    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from ocpp.v16.enums import Action
    from websockets.asyncio.server import serve

    def now():
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    counter = iter(range(1, 10**9))

    class Bare(ChargePoint):
        @on(Action.boot_notification)
        async def on_boot(self, **kw):
            return call_result.BootNotification(current_time=now(), interval=3600,
                                                status="Accepted")

        @on(Action.heartbeat)
        async def on_heartbeat(self, **kw):
            return call_result.Heartbeat(current_time=now())

        @on(Action.status_notification)
        async def on_status(self, **kw):
            return call_result.StatusNotification()

        @on(Action.authorize)
        async def on_authorize(self, **kw):
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on(Action.start_transaction)
        async def on_start(self, **kw):
            return call_result.StartTransaction(transaction_id=next(counter),
                                                id_tag_info={"status": "Accepted"})

        @on(Action.meter_values)
        async def on_meter_values(self, **kw):
            return call_result.MeterValues()

        @on(Action.stop_transaction)
        async def on_stop(self, **kw):
            return call_result.StopTransaction()

    async def handler(connection):
        cp = Bare(connection.request.path.rsplit("/", 1)[-1], connection)
        with contextlib.suppress(Exception):  # a closed connection ends the handler
            await cp.start()

    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"],
                     compression=None) as server:
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()


def child_main(args):
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        if args.serve == "egs":
            asyncio.run(serve_egs(args.db, args.port))
        else:
            asyncio.run(serve_bare(args.port))
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ emulated charge points

class Emulated:
    """One charge point as cheap as possible: raw OCPP-J frames on one websocket."""

    def __init__(self, i, url, auth):
        self.i = i
        self.url = f"{url}/{cp_id(i)}"
        self.headers = {"Authorization": "Basic " + base64.b64encode(
            f"{cp_id(i)}:{PASSWORD}".encode()).decode()} if auth else None
        self.ws = None
        self.n = 0
        self.pending = {}
        self.tx = None
        self.register = 1_000_000 + i
        self.reader = None

    async def connect(self):
        from websockets.asyncio.client import connect
        self.ws = await connect(self.url, subprotocols=["ocpp1.6"], additional_headers=self.headers,
                                compression=None, ping_interval=None, open_timeout=60,
                                max_queue=4)
        self.reader = asyncio.create_task(self._read())
        await self.call("BootNotification", {"chargePointVendor": "bench",
                                             "chargePointModel": "load"})
        res = await self.call("StartTransaction", {
            "connectorId": 1, "idTag": f"T{self.i:05d}", "meterStart": self.register,
            "timestamp": _iso(time.time())})
        self.tx = res["transactionId"]

    async def _read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                fut = self.pending.pop(msg[1], None)
                if fut is not None and not fut.done():
                    if msg[0] == 3:
                        fut.set_result(msg[2])
                    else:
                        fut.set_exception(RuntimeError(f"{msg[2]}: {msg[3]}"))
        except Exception as e:  # noqa: BLE001 — every waiter learns the connection is gone
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(e)

    async def call(self, action, payload):
        self.n += 1
        uid = str(self.n)
        fut = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload], separators=(",", ":")))
        return await asyncio.wait_for(fut, 30)

    async def one(self, k):
        """One request: Heartbeat or MeterValues in turn. → latency in ms."""
        t0 = time.perf_counter()
        if k % 2:
            self.register += 37
            await self.call("MeterValues", {"connectorId": 1, "transactionId": self.tx,
                                            "meterValue": [{"timestamp": _iso(time.time()),
                                                            "sampledValue": [{
                                                                "value": str(self.register),
                                                                "measurand": "Energy.Active.Import.Register",
                                                                "unit": "Wh"}]}]})
        else:
            await self.call("Heartbeat", {})
        return (time.perf_counter() - t0) * 1000

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


class Load:
    def __init__(self, url, auth, period):
        self.url, self.auth, self.period = url, auth, period
        self.cps = []
        self.lat = []
        self.errors = 0
        self.recording = False
        self.tasks = []

    async def grow(self, n, concurrency=50):
        sem = asyncio.Semaphore(concurrency)
        new = [Emulated(i, self.url, self.auth) for i in range(len(self.cps), n)]

        async def up(cp):
            async with sem:
                await cp.connect()
        results = await asyncio.gather(*(up(cp) for cp in new), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for cp, r in zip(new, results):
            if not isinstance(r, BaseException):
                self.cps.append(cp)
                self.tasks.append(asyncio.create_task(self._loop(cp)))
        gc.collect()
        gc.freeze()
        return failed

    async def _loop(self, cp):
        k = random.randrange(2)
        await asyncio.sleep(random.uniform(0, self.period))  # spread the phase
        while True:
            try:
                ms = await cp.one(k)
                if self.recording:
                    self.lat.append(ms)
            except Exception:  # noqa: BLE001 — counted, the run goes on
                if self.recording:
                    self.errors += 1
                await asyncio.sleep(self.period)
            k += 1
            await asyncio.sleep(self.period)

    async def measure(self, seconds):
        # the load generator's own garbage collection would show up as server latency:
        # pause the collector while measuring (grow() froze the connections' objects)
        gc.disable()
        self.lat, self.errors, self.recording = [], 0, True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.recording = False
            gc.enable()
        lat = sorted(self.lat)
        if not lat:
            return {"n": 0, "p50": float("inf"), "p99": float("inf"), "max": float("inf"),
                    "errors": self.errors}
        return {"n": len(lat), "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)],
                "max": lat[-1], "errors": self.errors}

    async def close(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(cp.close() for cp in self.cps), return_exceptions=True)


def cpu_seconds(pid):
    """User + system CPU time of a process (Linux /proc), for CPU cost per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(kind, db_path, port):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--db", str(db_path),
                             "--port", str(port)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return proc, int(line.split()[1])


# At each step the latency of every request is measured for `window` seconds after `settle`
# seconds of settling (12 s in a full run). A real charger sends MeterValues every 60 s or
# more and Heartbeats every few minutes. The emulator process pauses its own garbage
# collector while measuring, so that its pauses are not counted as server latency; the egs
# server runs with its default GC policy (CentralSystem._gc_loop), the bare one with
# Python's.
async def run_series(kind, steps, period, window, db_path, settle):
    proc, port = start_server(kind, db_path, 0)
    load = Load(f"ws://127.0.0.1:{port}/ocpp", auth=(kind == "egs"), period=period)
    held, rows = 0, []
    try:
        for n in steps:
            t0 = time.perf_counter()
            failed = await load.grow(n)
            ramp = time.perf_counter() - t0
            await asyncio.sleep(settle)  # steady state: connections up, one gc freeze passed
            cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
            m = await load.measure(window)
            cpu1, own1 = cpu_seconds(proc.pid), time.process_time()
            m["cpu_ms"] = (cpu1 - cpu0) * 1000 / m["n"] if m["n"] and cpu0 is not None else 0
            m["client_cpu"] = (own1 - own0) / window
            ok = not failed and m["errors"] == 0 and m["p99"] < LIMIT_MS and len(load.cps) == n
            rows.append((n, m, ramp, len(failed)))
            print(f"  {kind:4} N={n:5}  req={m['n']:6}  p50={m['p50']:7.1f} ms  "
                  f"p99={m['p99']:7.1f} ms  max={m['max']:7.1f} ms  errors={m['errors']}"
                  f"  server CPU {m['cpu_ms']:.2f} ms/req  client {m['client_cpu']:.0%} of a core  connect-failures={len(failed)}  ramp={ramp:4.1f} s  "
                  f"{'held' if ok else 'NOT held'}", flush=True)
            if not ok:
                break
            held = n
    finally:
        proc.terminate()  # the server first: closing thousands of clients is then instant
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            await asyncio.wait_for(load.close(), 30)
        except TimeoutError:
            print("  (some client connections did not close in 30 s)", flush=True)
    return held, rows


def cpu_per_request(rows):
    """Median server CPU ms per request over the steps measured."""
    vals = sorted(m["cpu_ms"] for _, m, _, _ in rows if m.get("cpu_ms"))
    return vals[len(vals) // 2] if vals else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, short windows (~30 s)")
    ap.add_argument("--steps", default=None, help="comma-separated N values")
    ap.add_argument("--period", type=float, default=None,
                    help="seconds between one charger's requests")
    ap.add_argument("--window", type=float, default=None, help="measuring seconds per step")
    ap.add_argument("--only", choices=["egs", "bare"], default=None,
                    help="measure one server only (no baseline: for experiments)")
    ap.add_argument("--serve", choices=["egs", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return child_main(args)
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.quick:
        steps = [50, 100, 200]
        period, window, settle = args.period or 2.0, args.window or 4.0, 2.0
    else:
        steps = [250, 500, 1000, 2000, 3000, 4000, 5000, 6000]
        period, window, settle = args.period or 5.0, args.window or 10.0, 12.0
    if args.steps:
        steps = [int(s) for s in args.steps.split(",")]
    if max(steps) + 100 > hard // 2:
        print(f"open-file limit {hard} is too low for {max(steps)} connections", file=sys.stderr)
        return 2
    print(f"OCPP load: steps {steps}, one request per charger every {period:g} s "
          f"(Heartbeat / MeterValues in turn), {window:g} s window, p99 limit {LIMIT_MS:g} ms; "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="ocpp-bench-") as tmp:
        db_path = Path(tmp) / "bench.sqlite"
        t0 = time.perf_counter()
        seed_db(db_path, max(steps))
        print(f"  seeded {max(steps)} chargers and idTags in {time.perf_counter() - t0:.1f} s")
        held_egs = held_bare = None
        if args.only in (None, "egs"):
            held_egs, rows_egs = asyncio.run(run_series("egs", steps, period, window, db_path, settle))
        if args.only in (None, "bare"):
            held_bare, rows_bare = asyncio.run(run_series("bare", steps, period, window, db_path, settle))
    if held_egs is None or held_bare is None:
        print(f"RESULT (one server only) egs={held_egs} bare={held_bare}")
        return 0
    rate = lambda n: n / period
    for name, rows in (("egs-gw", rows_egs), ("bare", rows_bare)):
        ms = cpu_per_request(rows)
        print(f"CPU   {name:6} server: {ms:.2f} ms per request → one free core ≈ "
              f"{1000 / ms:.0f} req/s ≈ {1000 / ms * period:.0f} charge points at this rate")
    print(f"RESULT egs-gw central system (auth, validation, durable MeterValues): "
          f"{held_egs} charge points held (≈{rate(held_egs):.0f} req/s) with p99 < {LIMIT_MS:g} ms")
    print(f"RESULT bare ocpp-library central system (no auth, no persistence):    "
          f"{held_bare} charge points held (≈{rate(held_bare):.0f} req/s) with p99 < {LIMIT_MS:g} ms")
    if max(steps) < TARGET:
        print(f"target {TARGET}: not tried (largest step {max(steps)}; run without --quick)")
    else:
        print(f"target {TARGET}: {'met' if held_egs >= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
