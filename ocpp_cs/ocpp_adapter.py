"""The one place the central system touches the `ocpp` library's private members.

The library's ChargePoint logs and drops a malformed frame; the central system
answers every frame itself (`frames.py`), so it needs what the library keeps
private: the connection, the lock `call()` holds while it waits for an answer,
the queue that answer is handed over in, the `_send` every outgoing frame goes
through, and the `_on_action` entry of the route map. They are named here only,
behind public methods, so that an upgrade of the library that changes them fails
loudly in one place, and `tests/ocpp/test_ocpp_adapter.py` fails first.
"""
from ocpp.v16 import ChargePoint as V16ChargePoint


class ChargePoint(V16ChargePoint):
    """The library's OCPP 1.6 ChargePoint with the private members it relies on made public."""

    @property
    def connection(self):
        """The websocket the charge point was created with."""
        return self._connection

    def handler_for(self, action):
        """The method marked `@on(action)`, or None when there is none."""
        handlers = self.route_map.get(action)
        return None if handlers is None else handlers.get("_on_action")

    def awaiting_answer(self):
        """True while `call()` waits for the charger's answer (it holds the call lock)."""
        return self._call_lock.locked()

    def deliver_answer(self, message):
        """Hand a CallResult or CallError to the `call()` waiting for it."""
        self._response_queue.put_nowait(message)

    async def send_frame(self, message):
        """Send one OCPP-J frame (text) on the connection."""
        await self._connection.send(message)

    async def _send(self, message):
        # the library's call() sends through _send, which also logs every frame at INFO
        await self.send_frame(message)
