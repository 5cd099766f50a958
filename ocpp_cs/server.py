"""OCPP 1.6J central system: websocket endpoint, Core profile handlers, CS → charger calls.

Endpoint: ws(s)://HOST:PORT/ocpp/<chargeBoxId>, subprotocol `ocpp1.6` (websockets
refuses a handshake without it: HTTP 400). Security profile 1 is HTTP Basic auth
(user = chargeBoxId, password checked against its scrypt hash); profile 2 is the
same over TLS. Unknown chargers get HTTP 404, or with `allow_unknown_pending` are
let in unauthenticated and answered `Pending` until an operator registers them.
A charger that connects again replaces its old connection, which is closed.

Handlers are the `ocpp` library's v16 ChargePoint with @on routes. Frames and
payloads are checked here (the library would log and drop a malformed frame),
so every bad CALL gets the CALLERROR OCPP-J 1.6 §4.2.3 names and the connection
stays open:
  not JSON, or > MAX_BRACKETS arrays/objects       → FormationViolation
  not [2, id, action, {payload}] / [3, …] / [4, …] → FormationViolation
  MessageTypeId not a number                       → TypeConstraintViolation
  MessageTypeId a number other than 2, 3, 4        → PropertyConstraintViolation
  action not in OCPP 1.6                           → NotImplemented ("not known")
  OCPP 1.6 action the CS does not take             → NotSupported ("recognised, not supported")
  schema: required property missing                → ProtocolError ("payload incomplete")
  schema: wrong JSON type, string too long         → TypeConstraintViolation
  schema: value outside enum/range, bad timestamp  → PropertyConstraintViolation
  schema: unknown property                         → FormationViolation
  schema: too few/many array items                 → OccurenceConstraintViolation
  an integer beyond 64 bits (connectorId …)        → PropertyConstraintViolation
  transaction messages from a Pending charger      → SecurityError
A CALLRESULT or CALLERROR nobody waits for cannot be answered (OCPP-J answers
only CALLs): it is logged and dropped. A frame whose uniqueId cannot be read is
answered with uniqueId "-1".
"""
import asyncio
import gc
import json
import logging
import re
import time
from urllib.parse import unquote, urlsplit

from jsonschema.exceptions import best_match
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    NotSupportedError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    SecurityError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import (
    NotImplementedError as OcppNotImplemented,
)
from ocpp.messages import CallError, CallResult, get_validator
from ocpp.routing import on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from ocpp_cs import store
from ocpp_cs.auth import VerifiedCache, parse_basic, verify_password
from ocpp_cs.dbworker import DBWorker

SUBPROTOCOL = "ocpp1.6"
PATH = re.compile(r"^/ocpp/([^/]+)/?$")
V16_ACTIONS = {a.value for a in Action}
# messages a charger may send before the CS has accepted it (BootNotification Pending)
PENDING_ALLOWED = {"BootNotification", "Heartbeat", "StatusNotification"}
SCHEMA_ERRORS = {
    "required": ProtocolError,
    "type": TypeConstraintViolationError,
    "maxLength": TypeConstraintViolationError,
    "minLength": TypeConstraintViolationError,
    "additionalProperties": FormationViolationError,
    "minItems": OccurenceConstraintViolationError,
    "maxItems": OccurenceConstraintViolationError,
}
# a Core frame holds a few dozen JSON arrays/objects; thousands mean hostile nesting, which
# the C JSON decoder follows down the C stack (a crash where the recursion limit is raised)
MAX_BRACKETS = 5000
# Unauthenticated clients must not grow the database without bound: at most this many
# unknown chargers wait as Pending, and a refused handshake is written as a security event
# at most once per REFUSAL_PERIOD_S for each (remote host, reason), with the number of
# refusals since the last one written.
MAX_PENDING = 100
REFUSAL_PERIOD_S = 60.0


class RefusalLog:
    """Which refused handshakes to write as security events (the rest are counted)."""

    MAX_KEYS = 10_000           # remote hosts remembered; then forgotten all at once

    def __init__(self, period_s=REFUSAL_PERIOD_S):
        self.period_s = period_s
        self.last = {}          # (host, reason) -> [written at, refusals not written since]

    def admit(self, host, reason, now):
        """None to skip writing this refusal, else the number skipped since the last one."""
        key = (host, reason)
        entry = self.last.get(key)
        if entry is not None and now - entry[0] < self.period_s:
            entry[1] += 1
            return None
        if entry is None and len(self.last) >= self.MAX_KEYS:
            self.last.clear()
        self.last[key] = [now, 0]
        return entry[1] if entry is not None else 0


# OCPP 1.6 meter key announcement (OCA application note on Eichrecht/OCMF)
METER_CONFIG = ("generalConfiguration", "setMeterConfiguration")

quiet = logging.getLogger("ocpp_cs.frames")  # the library logs every frame at INFO


class NotConnected(RuntimeError):
    pass


def validate(message_type_id, action, payload):
    """Schema-check a payload with the library's OCPP 1.6 schemas; raise the spec's error."""
    validator = get_validator(message_type_id, action, "1.6")
    error = best_match(validator.iter_errors(payload))
    if error is None:
        return
    cls = SCHEMA_ERRORS.get(error.validator, PropertyConstraintViolationError)
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    raise cls(description=f"{where}: {error.message}"[:500], details={"property": where})


class CSChargePoint(V16ChargePoint):
    """One connected charger as the central system sees it."""

    def __init__(self, charger_id, connection, cs, pending):
        super().__init__(charger_id, connection, response_timeout=cs.settings.call_timeout,
                         logger=quiet)
        self.cs = cs
        self.db = cs.db
        self.settings = cs.settings
        self.pending = pending
        self.log = cs.log

    # -------------------------------------------------------------- framing

    async def start(self):
        try:
            async for message in self._connection:
                self.cs.seen[self.id] = time.time()
                await self.route_message(message)
        except ConnectionClosed:
            pass

    async def _send_error(self, unique_id, error):
        frame = CallError(unique_id, error.code, error.description, error.details or {})
        self.log.info("%s: CALLERROR %s %s", self.id, error.code, error.description)
        await self._send(frame.to_json())

    async def route_message(self, raw):
        if isinstance(raw, bytes):
            return await self._send_error("-1", FormationViolationError(
                description="OCPP-J frames are text frames, got a binary frame"))
        if raw.count("[") + raw.count("{") > MAX_BRACKETS:
            return await self._send_error("-1", FormationViolationError(
                description=f"message has more than {MAX_BRACKETS} JSON arrays/objects"))
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
            return await self._send_error("-1", FormationViolationError(
                description="message is not valid JSON"))
        if not isinstance(frame, list) or not frame:
            return await self._send_error("-1", FormationViolationError(
                description="message is not a JSON array [MessageTypeId, UniqueId, ...]"))
        type_id = frame[0]
        uid = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else "-1"
        if isinstance(type_id, bool) or not isinstance(type_id, int):
            return await self._send_error(uid, TypeConstraintViolationError(
                description=f"MessageTypeId must be a number, got {type_id!r}"[:200]))
        if type_id == 2:
            if (len(frame) != 4 or not isinstance(frame[1], str) or not frame[1]
                    or len(frame[1]) > 36 or not isinstance(frame[2], str)
                    or not isinstance(frame[3], dict)):
                return await self._send_error(uid, FormationViolationError(
                    description="a CALL is [2, \"<uniqueId ≤36>\", \"<Action>\", {payload}]"))
            try:
                await self._handle_frame(frame[1], frame[2], frame[3])
            except OCPPError as e:
                await self._send_error(frame[1], e)
            return
        if type_id in (3, 4):
            shape_ok = (len(frame) == 3 and isinstance(frame[2], dict)) if type_id == 3 else \
                (len(frame) in (4, 5) and isinstance(frame[2], str))
            if not shape_ok or uid == "-1":
                self.log.warning("%s: malformed CALLRESULT/CALLERROR dropped: %.200s",
                                 self.id, raw)
                return
            if not self._call_lock.locked():
                self.log.warning("%s: answer to no outstanding call dropped: %.200s", self.id, raw)
                return
            msg = CallResult(uid, frame[2]) if type_id == 3 else \
                CallError(uid, frame[2], frame[3], frame[4] if len(frame) > 4 else {})
            self._response_queue.put_nowait(msg)
            return
        await self._send_error(uid, PropertyConstraintViolationError(
            description=f"MessageTypeId {type_id} is not CALL (2), CALLRESULT (3) or CALLERROR (4)"))

    async def _handle_frame(self, unique_id, action, payload):
        handlers = self.route_map.get(action)
        if handlers is None or "_on_action" not in handlers:
            if action in V16_ACTIONS:
                raise NotSupportedError(
                    description=f"{action} is recognised but not supported by this central system")
            raise OcppNotImplemented(description=f"{action[:60]!r} is not an OCPP 1.6 action")
        validate(2, action, payload)
        if self.pending and action not in PENDING_ALLOWED:
            raise SecurityError(description=f"{self.id} is not registered (Pending): {action} refused")
        try:
            response = await handlers["_on_action"](**camel_to_snake_case(payload))
        except OCPPError:
            raise
        except store.StoreError as e:
            raise PropertyConstraintViolationError(description=str(e)[:500]) from None
        except ValueError as e:
            raise PropertyConstraintViolationError(description=str(e)[:500]) from None
        except ArithmeticError:  # OverflowError: a JSON integer SQLite's 64 bits cannot hold
            raise PropertyConstraintViolationError(
                description=f"{action}: a number is out of range (64-bit integer)") from None
        except Exception:
            self.log.exception("%s: %s handler failed", self.id, action)
            raise InternalError(description=f"{action} could not be processed") from None
        body = snake_to_camel_case(remove_nones(serialize_as_dict(response)))
        validate(3, action, body)
        await self._send(CallResult(unique_id, body, action).to_json())

    async def _send(self, message):
        await self._connection.send(message)

    # -------------------------------------------------------------- Core: charger → CS

    @on(Action.boot_notification)
    async def on_boot_notification(self, charge_point_vendor, charge_point_model, **kw):
        if self.pending:
            self.log.info("%s: BootNotification from unregistered charger: Pending", self.id)
            return call_result.BootNotification(current_time=store.iso(time.time()),
                                                interval=self.settings.heartbeat_interval,
                                                status="Pending")
        await self.db.run(store.record_boot, self.id, charge_point_vendor, charge_point_model,
                          kw.get("charge_point_serial_number") or kw.get("charge_box_serial_number"),
                          kw.get("firmware_version"))
        return call_result.BootNotification(current_time=store.iso(time.time()),
                                            interval=self.settings.heartbeat_interval,
                                            status="Accepted")

    @on(Action.heartbeat)
    async def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=store.iso(time.time()))

    @on(Action.status_notification)
    async def on_status_notification(self, connector_id, error_code, status, **kw):
        await self.db.run(store.record_status, self.id, connector_id, status, error_code,
                          kw.get("info"), kw.get("vendor_error_code"), kw.get("timestamp"))
        self.cs.connector_status[(self.id, connector_id)] = status
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag, **kw):
        status, _, reason = await self.db.run(store.authorize, id_tag, self.settings, self.id)
        if status != "Accepted":
            self.log.info("%s: Authorize %s → %s (%s)", self.id, id_tag, status, reason)
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    async def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **kw):
        tx_id, info = await self.db.run(store.start_transaction, self.id, connector_id, id_tag,
                                        meter_start, timestamp, self.settings,
                                        kw.get("reservation_id"))
        self.log.info("%s: StartTransaction connector %s idTag %s → %s %s", self.id,
                      connector_id, id_tag, tx_id, info["status"])
        return call_result.StartTransaction(transaction_id=tx_id, id_tag_info=info)

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id, meter_value, **kw):
        await self.db.run(store.record_meter_values, self.id, connector_id,
                          kw.get("transaction_id"), snake_to_camel_case(meter_value),
                          "MeterValues")
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, meter_stop, timestamp, transaction_id, **kw):
        data = kw.get("transaction_data")
        info = await self.db.run(store.stop_transaction, self.id, transaction_id, meter_stop,
                                 timestamp, self.settings, self.cs.price_source,
                                 kw.get("reason"), kw.get("id_tag"),
                                 snake_to_camel_case(data) if data else None)
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id, **kw):
        message_id = kw.get("message_id")
        data = kw.get("data")
        if (vendor_id, message_id) == METER_CONFIG:
            try:
                meters = json.loads(data)["meters"]
                keys = {str(m.get("connectorId", 0)): str(m["publicKey"]) for m in meters}
            except (TypeError, ValueError, KeyError, AttributeError, RecursionError):
                return call_result.DataTransfer(status="Rejected", data="expected {\"meters\": "
                                                "[{\"connectorId\", \"publicKey\"}]}")
            await self.db.run(store.record_announced_keys, self.id, keys)
            return call_result.DataTransfer(status="Accepted")
        await self.db.run(store.event, self.id, "data_transfer", vendor_id=vendor_id,
                          message_id=message_id, data=(data or "")[:1000])
        if vendor_id == METER_CONFIG[0]:
            return call_result.DataTransfer(status="UnknownMessageId")
        return call_result.DataTransfer(status="UnknownVendorId")


class CentralSystem:
    """The running central system: listener, connections, CLI command queue."""

    def __init__(self, db_path, settings, log=None, price_source=None):
        self.db_path = str(db_path)
        self.settings = settings
        self.log = log or logging.getLogger("ocpp_cs")
        self.price_source = price_source or store.configured_price(settings.price_per_kwh)
        self.db = DBWorker(self.db_path, init=store.init)
        self.connections = {}
        self.connector_status = {}
        self.seen = {}
        self.cache = VerifiedCache()
        self.refusals = RefusalLog()
        self.server = None
        self.port = None
        self._tasks = set()
        self._stopping = asyncio.Event()

    # -------------------------------------------------------------- lifecycle

    async def start(self, host=None, port=None):
        self.db.start()
        host = host or self.settings.listen[0]
        port = self.settings.listen[1] if port is None else port
        self.server = await serve(
            self._handler, host, port, subprotocols=[SUBPROTOCOL],
            process_request=self._process_request, ssl=self.settings.ssl_context(),
            compression=None, max_size=256 * 1024, logger=logging.getLogger("ocpp_cs.ws"),
            open_timeout=20)
        self.port = self.server.sockets[0].getsockname()[1]
        self._spawn(self._command_loop())
        self._spawn(self._seen_loop())
        if self.settings.gc_freeze_s > 0:
            self._spawn(self._gc_loop())
        scheme = "wss" if self.settings.tls else "ws"
        self.log.info("OCPP central system on %s://%s:%s/ocpp/<chargeBoxId>", scheme, host,
                      self.port)
        return self

    async def stop(self):
        self._stopping.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.gc_freeze_s > 0:
            gc.unfreeze()  # the process's collector sees everything again
        if self.seen:
            await self.db.run(store.touch, dict(self.seen))
        await self.db.stop()

    def _spawn(self, coro):
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- handshake and sessions

    async def _process_request(self, connection, request):
        path = urlsplit(request.path).path
        m = PATH.match(path)
        if not m:
            return connection.respond(404, "not found: connect to /ocpp/<chargeBoxId>\n")
        charger_id = unquote(m.group(1))
        try:
            store.check_charger_id(charger_id)
        except store.StoreError as e:
            return connection.respond(400, f"{e}\n")
        remote = connection.remote_address
        charger = await self.db.run(store.get_charger, charger_id)
        if charger is None or charger["status"] == "pending":
            if not self.settings.allow_unknown_pending:
                await self._refused(charger_id, remote, "unknown charger refused")
                return connection.respond(404, "unknown charger\n")
            if charger is None:
                if await self.db.run(store.count_pending) >= MAX_PENDING:
                    await self._refused(charger_id, remote,
                                        f"unknown charger refused: {MAX_PENDING} already pending")
                    return connection.respond(503, "too many pending chargers\n")
                await self.db.run(store.note_pending, charger_id)
            connection.egs_charger = (charger_id, True)
            return None
        given = request.headers.get_all("Authorization")  # two of them: no credentials
        creds = parse_basic(given[0]) if len(given) == 1 else None
        stored = charger["password_hash"]
        ok = False
        if creds is not None and creds[0] == charger_id and stored:
            if self.cache.known_good(charger_id, stored, creds[1]):
                ok = True
            else:
                ok = await asyncio.to_thread(verify_password, stored, creds[1])
                if ok:
                    self.cache.remember(charger_id, stored, creds[1])
        if not ok:
            why = "no credentials" if creds is None else "wrong user or password"
            await self._refused(charger_id, remote, f"authentication failed: {why}")
            response = connection.respond(401, "authentication required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        connection.egs_charger = (charger_id, False)
        return None

    async def _refused(self, charger_id, remote, what):
        host = remote[0] if isinstance(remote, tuple) and remote else str(remote)
        skipped = self.refusals.admit(host, what, time.monotonic())
        if skipped is None:
            return
        self.log.warning("refused charger %s from %s: %s%s", charger_id, remote, what,
                         f" ({skipped} more refusals not logged)" if skipped else "")
        await self.db.run(store.event, charger_id, "security", what=what, remote=str(remote),
                          **({"refusals_not_logged": skipped} if skipped else {}))

    async def _handler(self, connection):
        charger_id, pending = connection.egs_charger
        cp = CSChargePoint(charger_id, connection, self, pending)
        old = self.connections.get(charger_id)
        self.connections[charger_id] = cp
        if old is not None:
            self.log.info("%s reconnected: closing its previous connection", charger_id)
            self._spawn(old._connection.close(code=1000, reason="replaced by a new connection"))
        self.seen[charger_id] = time.time()
        try:
            await cp.start()
        finally:
            if self.connections.get(charger_id) is cp:
                del self.connections[charger_id]

    # -------------------------------------------------------------- CS → charger

    async def call(self, charger_id, action, payload):
        """Send one CS → charger CALL; → the answer's payload (camelCase dict).

        Raises NotConnected, an OCPPError for a CALLERROR answer, or TimeoutError.
        """
        if action not in store.COMMAND_ACTIONS:
            raise ValueError(f"not a CS → charger command: {action}")
        cp = self.connections.get(charger_id)
        if cp is None:
            raise NotConnected(f"charger {charger_id} is not connected")
        request = getattr(call, action)(**camel_to_snake_case(payload))
        result = await cp.call(request, suppress=False)
        return snake_to_camel_case(remove_nones(serialize_as_dict(result)))

    async def _execute(self, row):
        try:
            result = await self.call(row["charger_id"], row["action"], json.loads(row["payload"]))
            await self.db.run(store.finish_command, row["id"], result=result)
        except asyncio.CancelledError:
            # the service stops (the DB worker still runs): the CLI waiting on it gets an answer
            await self.db.run(store.abandon_command, row["id"],
                              "the central system stopped before the charger answered")
            raise
        except Exception as e:  # noqa: BLE001 — any failure is the command's answer
            if isinstance(e, OCPPError):
                message = f"{e.code}: {e.description}"
            elif isinstance(e, (asyncio.TimeoutError, TimeoutError)):
                message = f"no answer from {row['charger_id']} in {self.settings.call_timeout} s"
            else:
                message = str(e) or type(e).__name__
            await self.db.run(store.finish_command, row["id"], error=message)

    async def _command_loop(self):
        while True:
            try:
                for row in await self.db.run(store.claim_commands):
                    self._spawn(self._execute(row))
            except Exception:
                self.log.exception("command queue")
            await asyncio.sleep(self.settings.command_poll_s)

    async def _gc_loop(self):
        """Keep Python's cyclic garbage collector off the request path.

        Every idle connection waits in a chain of coroutine, future and frame
        objects that is rebuilt on each message, so with thousands of chargers
        tens of thousands of young objects live for seconds: each young
        collection walks them all (tens of ms), and the long-lived connection
        state makes full collections stall the loop for ~0.5 s at 5,000 chargers.
        Freezing (gc.freeze, O(1)) every gc_freeze_s hands all of it to reference
        counting, which frees them as usual, and keeps the collector's
        generations nearly empty. Cyclic garbage frozen on the way waits for the
        periodic unfreeze + full collection (one pause every gc_full_s; what it
        frees is logged, so a leak would show).
        """
        full_every = max(1, round(self.settings.gc_full_s / self.settings.gc_freeze_s))
        n = 0
        while True:
            await asyncio.sleep(self.settings.gc_freeze_s)
            n += 1
            if n % full_every == 0:
                gc.unfreeze()
                t0 = time.perf_counter()
                freed = gc.collect()
                self.log.info("full garbage collection: %d objects freed in %.0f ms", freed,
                              (time.perf_counter() - t0) * 1000)
            gc.freeze()

    async def _seen_loop(self):
        while True:
            await asyncio.sleep(30)
            seen, self.seen = self.seen, {}
            if seen:
                try:
                    await self.db.run(store.touch, seen)
                except Exception:
                    self.log.exception("last-seen flush")
