"""Helpers for the OCPP tests: a real central system on a free loopback port, real
websocket clients (the emulator, or a raw one that sends hand-written frames)."""
import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager

from websockets.asyncio.client import connect

from gateway import accounts, config
from gateway import db as db_mod
from gateway.db import transaction
from ocpp_cs import auth, store
from ocpp_cs.server import CentralSystem
from ocpp_cs.settings import Settings

POOL = "0x" + "77" * 20
OWNER = "0x" + "0e" * 20
EV_ADDR = "0x" + "ee" * 20
PRICE = 300_000_000_000_000_000      # 0.3 EEA per kWh
FEE = 50_000_000_000_000_000         # 0.05 EEA per kWh
DEPOSIT = 1_000_000_000_000_000_000  # 1 EEA
PASSWORD = "s3cret-Passw0rd"
# cheap scrypt for test chargers: the cost is not what these tests are about
FAST = {"n": 2**10, "r": 8, "p": 1}


def settings(**over):
    section = dict(config.load()["ocpp"])
    section.update({"listen": "127.0.0.1:0", "price_per_kwh": f"{PRICE} base", "energy_pool": POOL,
                    "min_deposit_eea": f"{DEPOSIT} base", "command_poll_s": 0.05})
    section.update(over)
    return Settings(section)


def seed(db_path, chargers=(), tags=(), pool_watt=10**9):
    """chargers: (id, dict(owner=, fee=, meter_key=, password=)); tags: (tag, address, eea)."""
    conn = db_mod.connect(db_path)
    store.init(conn)
    with transaction(conn):
        for cid, opts in chargers:
            store.add_charger(conn, cid, auth.hash_password(opts.get("password", PASSWORD), **FAST),
                              opts.get("owner", OWNER), opts.get("fee", FEE), opts.get("meter_key"))
        for tag, address, eea in tags:
            store.add_id_tag(conn, tag, address)
            if eea:
                accounts.post(conn, [(address or store.tag_address(tag), "EEA", eea)], "test_credit")
        if pool_watt:
            accounts.post(conn, [(POOL, "WATT", pool_watt)], "test_pool_watt")
    conn.close()


@asynccontextmanager
async def central(db_path, **over):
    cs = CentralSystem(db_path, settings(**over))
    await cs.start(port=0)
    cs.url = f"{'wss' if cs.settings.tls else 'ws'}://127.0.0.1:{cs.port}/ocpp"
    try:
        yield cs
    finally:
        await cs.stop()


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@asynccontextmanager
async def raw_client(cs, charger_id="CP1", password=PASSWORD, **kw):
    headers = basic(charger_id, password) if password else None
    async with connect(f"{cs.url}/{charger_id}", subprotocols=["ocpp1.6"],
                       additional_headers=headers, compression=None, **kw) as ws:
        yield RawClient(ws)


class RawClient:
    """Hand-written OCPP-J frames, for the cases a well-behaved library never sends."""

    def __init__(self, ws):
        self.ws = ws
        self.n = 0

    async def send_raw(self, text):
        await self.ws.send(text)
        return json.loads(await asyncio.wait_for(self.ws.recv(), 10))

    async def call(self, action, payload, uid=None):
        self.n += 1
        uid = uid or f"m{self.n}"
        frame = await self.send_raw(json.dumps([2, uid, action, payload]))
        assert frame[1] == uid, frame
        return frame

    async def ok(self, action, payload):
        frame = await self.call(action, payload)
        assert frame[0] == 3, frame
        return frame[2]

    async def error(self, action, payload):
        frame = await self.call(action, payload)
        assert frame[0] == 4, frame
        return frame[2]

    async def start(self, payload):
        """Authorize, then StartTransaction, as a charger does: the CS bills only idTags
        it accepted for this charger."""
        await self.ok("Authorize", {"idTag": payload["idTag"]})
        return await self.ok("StartTransaction", payload)


def now_iso(offset=0.0):
    return store.iso(time.time() + offset)


def db(db_path):
    conn = db_mod.connect(db_path)
    store.init(conn)
    return conn


def eea(conn, address):
    return accounts.balance(conn, address, "EEA")


def watt(conn, address):
    return accounts.balance(conn, address, "WATT")


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))
