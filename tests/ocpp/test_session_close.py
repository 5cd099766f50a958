"""`egs-gw session close`: a session whose charger went away is force-closed from the
last meter value received, settled once, and its idTag is free again; the charger's
late StopTransaction is acknowledged and changes nothing."""
import asyncio
import json

from click.testing import CliRunner

from gateway.cli import main
from sim.charger import EV, SimChargePoint
from tests.ocpp.fixtures import (
    DEPOSIT,
    EV_ADDR,
    FEE,
    OWNER,
    PASSWORD,
    POOL,
    PRICE,
    central,
    db,
    eea,
    run,
    seed,
)


def cli(tmp_path, *args, ok=True, stdin=None):
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                        'min_deposit_eea = "1 EEA"\n')
    result = CliRunner().invoke(main, [*args, "--config", str(conf), "--db",
                                       str(tmp_path / "g.db"), "--json"], input=stdin)
    if ok:
        assert result.exit_code == 0, (args, result.output)
        return json.loads(result.output)
    assert result.exit_code != 0, (args, result.output)
    return result.output


def test_force_close_a_session_left_active_by_a_charger_that_went_away(tmp_path):
    path = tmp_path / "g.db"
    seed(path, chargers=[("CP1", {}), ("CP2", {})], tags=[("TAG1", EV_ADDR, 5 * DEPOSIT)])

    async def go():
        async with central(path) as cs:
            cp = SimChargePoint(cs.url, "CP1", password=PASSWORD)
            await cp.start()
            await cp.wait_connected()
            tx = await cp.start_transaction(1, "TAG1", ev=EV(60, 11, 0.2))
            tx_id = await tx.started
            await cp.deliver(1, 4_000)
            await cp.deliver(1, 3_000)
            await cp.wait_idle()
            # the charger goes away; its stop (with more energy) waits in its queue
            await cp.go_offline()
            await cp.deliver(1, 5_000)
            await cp.stop_transaction(1)

            def gw(*args, **kw):
                return asyncio.to_thread(cli, tmp_path, *args, **kw)
            # the idTag is locked while the session is active
            other = SimChargePoint(cs.url, "CP2", password=PASSWORD)
            await other.start()
            await other.wait_connected()
            tx2 = await other.start_transaction(1, "TAG1")
            await tx2.started
            assert tx2.id_tag_status == "ConcurrentTx"
            await other.stop_transaction(1)
            await other.wait_idle()

            refused = await gw("session", "close", str(tx_id), "--note", "charger gone",
                               ok=False, stdin="n\n")
            assert (await gw("session", "show", str(tx_id)))["state"] == "active", refused
            closed = await gw("session", "close", str(tx_id), "--note", "charger gone", "--yes")
            assert closed["state"] == "settled"
            assert closed["energy_wh"] == 7_000          # up to the last meter value received
            assert closed["stop_reason"] == "ForceClosed"
            assert "force-closed: charger gone" in closed["flags"]
            assert "is settled, not active" in await gw("session", "close", str(tx_id),
                                                        "--note", "again", "--yes", ok=False)
            assert "unknown transaction" in await gw("session", "close", "999", "--note", "x",
                                                     "--yes", ok=False)
            conn = db(path)
            paid = 5 * DEPOSIT - eea(conn, EV_ADDR)
            assert paid == 7_000 * (PRICE + FEE) // 1000
            assert eea(conn, OWNER) == 7_000 * FEE // 1000
            assert (await gw("session", "show", str(tx2.id)))["state"] != "active"

            # the idTag is free again
            tx3 = await other.start_transaction(1, "TAG1")
            await tx3.started
            assert tx3.id_tag_status == "Accepted"
            await other.stop_transaction(1)
            await other.wait_idle()
            await other.close()

            # the charger comes back: its stop is acknowledged and changes nothing
            cp.go_online()
            await cp.wait_connected()
            await cp.wait_idle()
            assert tx.stop_answer is not None
            after = await gw("session", "show", str(tx_id))
            assert (after["state"], after["energy_wh"]) == ("settled", 7_000)
            assert eea(db(path), EV_ADDR) == 5 * DEPOSIT - paid
            kinds = [r["kind"] for r in db(path).execute(
                "SELECT kind FROM ocpp_events WHERE detail LIKE ?", (f'%"transaction_id": {tx_id}%',))]
            assert "session_force_closed" in kinds and "stop_after_force_close" in kinds
            await cp.close()
    run(go(), timeout=90)
