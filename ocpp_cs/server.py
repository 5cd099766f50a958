"""OCPP 1.6J central system: the websocket endpoint, its connections, and CS → charger calls.

Endpoint: ws(s)://HOST:PORT/ocpp/<chargeBoxId>, subprotocol `ocpp1.6` (websockets
refuses a handshake without it: HTTP 400). Security profile 1 is HTTP Basic auth
(user = chargeBoxId, password checked against its scrypt hash); profile 2 is the
same over TLS. Wrong passwords are rationed per remote network and per charger id
(`auth.Throttle`: HTTP 429 with Retry-After before any scrypt runs). Unknown
chargers get HTTP 404, or with `allow_unknown_pending` are let in unauthenticated
and answered `Pending` until an operator registers them; a pending id belongs to
the remote host it first came from (a second connection while the first lives:
409; from another host: 403), and the AuthorizationKey that onboards it is sent
only over TLS. A registered charger that connects again replaces its old
connection, which is closed.
Each connection is a `handlers.CSChargePoint` (its frames checked by `frames.py`).
The CLI's calls to chargers reach the service through the store's command queue.
"""
import asyncio
import gc
import json
import logging
import re
import time
from urllib.parse import unquote, urlsplit

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from websockets.asyncio.server import serve

from ocpp_cs import store
from ocpp_cs.auth import Throttle, VerifiedCache, network_of, parse_basic, verify_password
from ocpp_cs.dbworker import DBWorker
from ocpp_cs.frames import RedactingLog
from ocpp_cs.handlers import CSChargePoint, WriteQuota

SUBPROTOCOL = "ocpp1.6"
PATH = re.compile(r"^/ocpp/([^/]+)/?$")

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


class NotConnected(RuntimeError):
    pass


class CallRefused(RuntimeError):
    """A CS → charger call the central system will not send (a secret over plain ws://)."""


def _host(remote):
    return remote[0] if isinstance(remote, tuple) and remote else str(remote)


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
        self.throttle = Throttle()
        self.scrypt_runs = 0        # password hashes computed: what a guesser costs the gateway
        self.pending_live = {}      # pending charger id -> the connection that holds it
        self.refusals = RefusalLog()
        self.meter_quota = WriteQuota(settings.meter_values_per_min)
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
            compression=None, max_size=256 * 1024,
            logger=RedactingLog(logging.getLogger("ocpp_cs.ws")),
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
            return await self._admit_pending(connection, charger_id, remote)
        given = request.headers.get_all("Authorization")  # two of them: no credentials
        creds = parse_basic(given[0]) if len(given) == 1 else None
        stored = charger["password_hash"]
        ok = False
        if creds is not None and creds[0] == charger_id and stored:
            if self.cache.known_good(charger_id, stored, creds[1]):
                ok = True
            else:
                host, cid = ("host", network_of(_host(remote))), ("charger", charger_id)
                wait = self.throttle.wait((host, cid), time.monotonic())
                if wait is not None:
                    await self._refused(charger_id, remote,
                                        "authentication throttled: too many wrong passwords")
                    response = connection.respond(429, "too many failed logins, retry later\n")
                    response.headers["Retry-After"] = str(wait)
                    return response
                self.throttle.take((cid,), time.monotonic())   # before scrypt: see Throttle
                self.scrypt_runs += 1
                ok = await asyncio.to_thread(verify_password, stored, creds[1])
                if ok:
                    self.throttle.refund((cid,), time.monotonic())
                    self.cache.remember(charger_id, stored, creds[1])
                else:
                    self.throttle.take((host,), time.monotonic())
        if not ok:
            why = "no credentials" if creds is None else "wrong user or password"
            await self._refused(charger_id, remote, f"authentication failed: {why}")
            response = connection.respond(401, "authentication required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        connection.egs_charger = (charger_id, False)
        return None

    async def _admit_pending(self, connection, charger_id, remote):
        """An unknown charger under allow_unknown_pending: one live connection per id, and
        the id stays with the remote host it first came from (the cap is checked and the
        row written in one database operation, so concurrent newcomers cannot pass it)."""
        holder = self.pending_live.get(charger_id)
        if holder is not None and holder.state.name != "CLOSED":
            await self._refused(charger_id, remote, "pending charger id already connected")
            return connection.respond(409, "this charger id is already connected\n")
        self.pending_live[charger_id] = connection    # held until _handler ends
        outcome = await self.db.run(store.admit_pending, charger_id, _host(remote), MAX_PENDING)
        if outcome == "full":
            self.pending_live.pop(charger_id, None)
            await self._refused(charger_id, remote,
                                f"unknown charger refused: {MAX_PENDING} already pending")
            return connection.respond(503, "too many pending chargers\n")
        if outcome == "registered":    # registered meanwhile: it must log in with its password
            self.pending_live.pop(charger_id, None)
            return connection.respond(503, "charger was just registered: connect again\n")
        if outcome == "other_host":
            self.pending_live.pop(charger_id, None)
            await self._refused(charger_id, remote,
                                "pending charger id claimed from another host")
            return connection.respond(403, "this pending charger id belongs to another host\n")
        connection.egs_charger = (charger_id, True)
        return None

    async def _refused(self, charger_id, remote, what):
        host = _host(remote)
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
            self._spawn(old.connection.close(code=1000, reason="replaced by a new connection"))
        self.seen[charger_id] = time.time()
        try:
            await cp.start()
        finally:
            if self.connections.get(charger_id) is cp:
                del self.connections[charger_id]
            if pending and self.pending_live.get(charger_id) is connection:
                del self.pending_live[charger_id]

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
        if store.secret_fields(action, payload) and not self.settings.tls:
            raise CallRefused(f"{action} {payload.get('key')}: a secret is sent only over TLS "
                              "(wss://, set [ocpp] tls_cert and tls_key)")
        request = getattr(call, action)(**camel_to_snake_case(payload))
        remote_start = action == "RemoteStartTransaction"
        if remote_start:  # granted before the charger can answer with its StartTransaction
            await self.db.run(store.grant, charger_id, payload["idTag"], "RemoteStart")
        try:
            result = await cp.call(request, suppress=False)
        except Exception:
            if remote_start:
                await self.db.run(store.revoke_grant, charger_id, payload["idTag"])
            raise
        if remote_start and result.status != "Accepted":
            await self.db.run(store.revoke_grant, charger_id, payload["idTag"])
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
