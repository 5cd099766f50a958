"""The `ocpp` library's private members the central system relies on, on the installed version.

`ocpp_cs/ocpp_adapter.py` is the only module that touches them. When an upgrade of
the library renames or reshapes one, these tests fail first and name it.
"""
import asyncio
import json

import pytest
from ocpp.charge_point import ChargePoint as LibraryChargePoint
from ocpp.exceptions import OCPPError
from ocpp.messages import CallError, CallResult
from ocpp.routing import on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from ocpp_cs.frames import FramedChargePoint
from ocpp_cs.handlers import CSChargePoint
from ocpp_cs.ocpp_adapter import ChargePoint

NOW = "2026-01-01T00:00:00Z"


class FakeConnection:
    def __init__(self):
        self.sent = []

    async def send(self, message):
        self.sent.append(message)


class Probe(ChargePoint):
    @on(Action.heartbeat)
    async def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=NOW)


def test_private_members_exist_with_the_types_the_adapter_assumes():
    conn = FakeConnection()
    cp = Probe("CP1", conn)
    assert cp._connection is conn and cp.connection is conn
    assert isinstance(cp._call_lock, asyncio.Lock)
    assert isinstance(cp._response_queue, asyncio.Queue)
    assert callable(vars(LibraryChargePoint)["_send"])


def test_route_map_entry_of_an_action_holds_its_on_handler():
    cp = Probe("CP1", FakeConnection())
    assert cp.route_map[Action.heartbeat]["_on_action"] == cp.on_heartbeat
    assert cp.handler_for("Heartbeat") == cp.on_heartbeat
    assert cp.handler_for("Reset") is None


async def sent_call(conn, n):
    """The n-th frame sent on conn, once it is."""
    for _ in range(500):  # call() validates the payload in a thread before it sends
        if len(conn.sent) >= n:
            return json.loads(conn.sent[n - 1])
        await asyncio.sleep(0.01)
    raise AssertionError("call() sent nothing")


def test_call_sends_through_send_holds_the_lock_and_takes_its_answer_from_the_queue():
    async def go():
        conn = FakeConnection()
        cp = Probe("CP1", conn, response_timeout=5)
        through_adapter = []
        send_frame = cp.send_frame

        async def spy(message):
            through_adapter.append(message)
            await send_frame(message)
        cp.send_frame = spy

        assert not cp.awaiting_answer()
        task = asyncio.create_task(cp.call(call.Heartbeat(), suppress=False))
        frame = await sent_call(conn, 1)
        assert frame[0] == 2 and frame[2] == "Heartbeat"
        assert through_adapter == conn.sent          # the library's call() sends via _send
        assert cp.awaiting_answer()                  # the lock is held while it waits
        cp.deliver_answer(CallResult(frame[1], {"currentTime": NOW}))
        result = await asyncio.wait_for(task, 5)
        assert result.current_time == NOW
        assert not cp.awaiting_answer()

        task = asyncio.create_task(cp.call(call.Heartbeat(), suppress=False))
        frame = await sent_call(conn, 2)
        assert frame[2] == "Heartbeat" and len(conn.sent) == 2
        cp.deliver_answer(CallError(frame[1], "InternalError", "broken", {}))
        with pytest.raises(OCPPError, match="broken"):
            await asyncio.wait_for(task, 5)
        assert not cp.awaiting_answer()

    asyncio.run(go())


def test_the_central_system_overrides_only_the_library_members_it_means_to():
    library = set(dir(V16ChargePoint))
    ours = set()
    for cls in (ChargePoint, FramedChargePoint, CSChargePoint):
        ours |= {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))}
    assert ours & library == {"_send", "start", "route_message"}
