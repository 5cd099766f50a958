"""The ledger inside `egs-gw run`: gateway.ledger.service.run(ctx) settles and drains
to Anvil, wakes on the gateway's interval_closed hook, survives a missing deployment
(settlements stay queued, one error line) and stops when ctx.stopping is set."""
import asyncio
import logging
import time

from gateway import db
from gateway.ledger import outbox, service
from tests.ledger.fixtures import (
    T0,
    L,
    Signer,
    addr,
    ingest,
    ledger_env_fixture,  # noqa: F401 - the ledger_env fixture
)


class Ctx:
    def __init__(self, env, log):
        self.config = env.cfg
        self.db_path = str(env.db_path)
        self.community = env.settings.community
        self.log = log
        self.stopping = asyncio.Event()
        self.hooks = {"interval_closed": []}
        self.health = {}        # as gateway.service.Context: components report here


async def until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


def counts(env):
    conn = db.connect(env.db_path)
    try:
        return outbox.counts(conn)
    finally:
        conn.close()


def test_service_settles_drains_and_stops(ledger_env):
    env = ledger_env
    env.ledger["tick_s"] = 30.0          # only the hook can wake it in time
    env.write_config()
    conn = env.conn()
    s = Signer("dev1", "SN1")
    s.register(conn, account=addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 0, 700)])

    async def main():
        ctx = Ctx(env, logging.getLogger("test.ledger"))
        task = asyncio.create_task(service.run(ctx))
        assert await until(lambda: counts(env) == {"confirmed": 1})
        ingest(conn, s, [(3, T0 + 2 * L, 0, 900)])
        for cb in ctx.hooks["interval_closed"]:
            cb([{"id": 0}])
        ok = await until(lambda: counts(env) == {"confirmed": 2}, timeout=10)
        assert ok, counts(env)
        ctx.stopping.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert env.chain().balances([addr(1)])[addr(1)][0] == 900


def test_service_without_deployment_queues_and_logs_once(ledger_env, caplog):
    env = ledger_env
    env.deployment.unlink()
    env.ledger["tick_s"] = 0.05
    env.write_config()
    conn = env.conn()
    s = Signer("dev1", "SN1")
    s.register(conn, account=addr(1))
    ingest(conn, s, [(1, T0, 0, 0), (2, T0 + L, 0, 700)])

    async def main():
        ctx = Ctx(env, logging.getLogger("test.ledger"))
        task = asyncio.create_task(service.run(ctx))
        assert await until(lambda: counts(env) == {"queued": 1})
        await asyncio.sleep(0.5)
        ctx.stopping.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    errors = [r for r in caplog.records if "cannot reach its contracts" in r.getMessage()]
    assert len(errors) == 1 and "egs-gw ledger deploy" in errors[0].getMessage()
