"""The market inside `egs-gw run`: agents react, trades settle, the OCPP price hook."""
import asyncio
import logging
import time

import ocpp_cs.settings  # noqa: F401 - declares [ocpp], so the hook can read it
from gateway import config as config_mod
from gateway import db
from gateway.ledger import outbox
from gateway.market import service
from tests.market.fixtures import EEA, addr, credit, open_store, price


class Ctx:
    def __init__(self, config, db_path):
        self.config = config
        self.db_path = str(db_path)
        self.community = "c1"
        self.log = logging.getLogger("test.market")
        self.stopping = asyncio.Event()
        self.hooks = {"interval_closed": []}
        self.health = {}        # as gateway.service.Context: components report here


def load(tmp_path, extra=""):
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\ncommunity = "c1"\n[market]\nbmax_wh = 4000\npoll_s = 0.05\n'
                    'interval_s = 1\n' + extra)
    return config_mod.load(conf)


def test_service_lets_agents_trade_and_settles_closed_intervals(tmp_path):
    pool = addr(500)
    cfg = load(tmp_path, f'[ocpp]\nenergy_pool = "{pool}"\nprice_per_kwh = "0.30 EEA"\n')
    dbp = tmp_path / "gw.sqlite"
    conn = open_store(dbp)
    seller, buyer = addr(1), addr(2)
    credit(conn, buyer, eea=EEA)
    ctx = Ctx(cfg, dbp)

    async def scenario():
        task = asyncio.create_task(service.run(ctx))
        try:
            await asyncio.sleep(0.2)
            from gateway.market.exchange import Market
            from tests.market.fixtures import settings
            m = Market(conn, "c1", settings(bmax_wh=4000, interval_s=1))
            await asyncio.to_thread(m.set_agent, seller, sell_price="0.5 EEA")
            await asyncio.to_thread(m.place, buyer, "buy", 1000, price("0.6"))
            credit(conn, seller, watt=4000)  # the battery is full: the agent sells
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if conn.execute("SELECT COUNT(*) FROM market_trades").fetchone()[0]:
                    break
                await asyncio.sleep(0.05)
            row = conn.execute("SELECT seller, buyer, wh, price FROM market_trades").fetchone()
            assert (row["seller"], row["buyer"], row["wh"]) == (seller, buyer, 1000)
            assert int(row["price"]) == price("0.6")  # the resting bid's price
            # The interval closes (1 s here): the service settles it through the outbox.
            while time.monotonic() < deadline:
                if conn.execute("SELECT COUNT(*) FROM ledger_outbox WHERE kind='trades'"
                                ).fetchone()[0]:
                    break
                await asyncio.sleep(0.1)
            assert outbox.pending(conn)[0]["kind"] == "trades"
            assert "ocpp_price_source" in ctx.hooks
        finally:
            ctx.stopping.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    conn.close()


def test_price_hook_only_with_an_ocpp_pool(tmp_path):
    log = logging.getLogger("test.market")
    ctx = Ctx(load(tmp_path), tmp_path / "x.sqlite")
    from gateway.market.settings import validate
    assert service.install_price_hook(ctx, validate(ctx.config), log) is False
    assert "ocpp_price_source" not in ctx.hooks
    ctx = Ctx(load(tmp_path, '[ocpp]\nenergy_pool = "nope"\nprice_per_kwh = 5\n'), "x")
    assert service.install_price_hook(ctx, validate(ctx.config), log) is False
    ctx = Ctx(load(tmp_path, f'[ocpp]\nenergy_pool = "{addr(3)}"\nprice_per_kwh = 5\n'), "x")
    s = dict(validate(ctx.config))
    s["price_sessions"] = False
    assert service.install_price_hook(ctx, s, log) is False
    assert service.install_price_hook(ctx, validate(ctx.config), log) is True


def test_session_price_source_falls_back_without_touching_the_callers_work(tmp_path):
    from gateway.market.exchange import session_price_source
    conn = open_store(tmp_path / "gw.sqlite")
    conn.execute("CREATE TABLE caller (x)")
    source = session_price_source("c1", "not-an-address", fallback_price=777)
    with db.transaction(conn):
        conn.execute("INSERT INTO caller VALUES (1)")
        assert source(conn, {"charger_id": "CP", "id": 1}, 100) == 777
    assert conn.execute("SELECT COUNT(*) FROM caller").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM market_orders").fetchone()[0] == 0
    conn.close()


def test_a_failed_cycle_is_logged_and_the_service_keeps_going(tmp_path, monkeypatch, caplog):
    """One failing cycle used to end the market task, and with it `egs-gw run`."""
    cfg = load(tmp_path)
    dbp = tmp_path / "gw.sqlite"
    conn = open_store(dbp)
    seller, buyer = addr(1), addr(2)
    credit(conn, seller, watt=500)
    credit(conn, buyer, eea=EEA)
    ctx = Ctx(cfg, dbp)
    real = service._cycle
    calls = []

    def flaky(market):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return real(market)
    monkeypatch.setattr(service, "_cycle", flaky)

    async def scenario():
        task = asyncio.create_task(service.run(ctx))
        try:
            from gateway.market.exchange import Market
            from tests.market.fixtures import settings
            m = Market(conn, "c1", settings(bmax_wh=4000, interval_s=1))
            await asyncio.to_thread(m.place, seller, "sell", 100, price("0.5"))
            await asyncio.to_thread(m.place, buyer, "buy", 100, price("0.5"))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not task.done():
                if conn.execute("SELECT COUNT(*) FROM ledger_outbox WHERE kind='trades'"
                                ).fetchone()[0]:
                    break
                await asyncio.sleep(0.05)
            assert not task.done(), task.exception()
            assert len(calls) > 1
            assert conn.execute("SELECT COUNT(*) FROM market_trades WHERE settlement_id "
                                "IS NOT NULL").fetchone()[0] == 1
        finally:
            ctx.stopping.set()
            await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.ERROR, logger="test.market"):
        asyncio.run(scenario())
    assert "market cycle failed" in caplog.text and "disk hiccup" in caplog.text
    conn.close()
