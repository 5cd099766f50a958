"""OCPP-J frames in: every frame checked here and answered, so a bad one never goes unanswered.

The `ocpp` library would log and drop a malformed frame; here every bad CALL gets
the CALLERROR OCPP-J 1.6 §4.2.3 names (table below) and the connection stays open.
Payloads are checked against the library's official OCPP 1.6 schemas, in and out.
A CALLRESULT or CALLERROR nobody waits for cannot be answered (OCPP-J answers only
CALLs): it is logged and dropped. A frame whose uniqueId cannot be read is answered
with uniqueId "-1". `FramedChargePoint` does this for `handlers.CSChargePoint`,
which holds only the handlers. Frames are logged at DEBUG, never INFO, through
`RedactingLog`: idTags masked, secret configuration values (AuthorizationKey)
replaced, whatever level the operator turns on.
"""
import json
import logging
import re

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
from ocpp.v16.enums import Action
from websockets.exceptions import ConnectionClosed

from ocpp_cs.ocpp_adapter import ChargePoint
from ocpp_cs.store.command_queue import REDACTED, SECRET_KEY

# The CALLERROR for each fault:
#   not JSON, or > MAX_BRACKETS arrays/objects       → FormationViolation
#   not [2, id, action, {payload}] / [3, …] / [4, …] → FormationViolation
#   MessageTypeId not a number                       → TypeConstraintViolation
#   MessageTypeId a number other than 2, 3, 4        → PropertyConstraintViolation
#   action not in OCPP 1.6                           → NotImplemented ("not known")
#   OCPP 1.6 action the CS does not take             → NotSupported ("recognised, not supported")
#   schema: required property missing                → ProtocolError ("payload incomplete")
#   schema: wrong JSON type, string too long         → TypeConstraintViolation
#   schema: value outside enum/range, bad timestamp  → PropertyConstraintViolation
#   schema: unknown property                         → FormationViolation
#   schema: too few/many array items                 → OccurenceConstraintViolation
#   an integer beyond 64 bits (connectorId …)        → PropertyConstraintViolation
#   transaction messages from a Pending charger      → SecurityError

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

def mask_id_tag(id_tag):
    """An idTag fit for a log line: its first two characters and its length."""
    id_tag = str(id_tag)
    return f"{id_tag[:2]}…({len(id_tag)})"


_SECRET = SECRET_KEY.pattern
_ID_TAG = re.compile(r'("id_?[tT]ag"\s*:\s*")([^"\\]*)')
_KEY_VALUE = re.compile(r'("key"\s*:\s*"[^"]*(?:' + _SECRET + r')[^"]*"\s*,\s*"value"\s*:\s*")'
                        r'([^"\\]*)', re.IGNORECASE)
_VALUE_KEY = re.compile(r'("value"\s*:\s*")([^"\\]*)("\s*,\s*"key"\s*:\s*"[^"]*(?:'
                        + _SECRET + r'))', re.IGNORECASE)


def redact_text(text):
    """A log line with idTags masked and secret configuration values replaced."""
    text = _ID_TAG.sub(lambda m: m.group(1) + mask_id_tag(m.group(2)), text)
    text = _KEY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    return _VALUE_KEY.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


class RedactingLog(logging.LoggerAdapter):
    """A logger for code that logs whole frames (the ocpp library, websockets): each
    line redacted (`redact_text`), and with `demote` its INFO lines logged at DEBUG."""

    def __init__(self, logger, demote=False):
        super().__init__(logger, {})
        self.demote = demote

    def log(self, level, msg, *args, **kwargs):
        if self.demote and level == logging.INFO:
            level = logging.DEBUG
        if not self.logger.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        self.logger.log(level, "%s", redact_text(text), **kwargs)


# the library logs every frame at INFO: here at DEBUG, redacted
quiet = RedactingLog(logging.getLogger("ocpp_cs.frames"), demote=True)


def validate(message_type_id, action, payload):
    """Schema-check a payload with the library's OCPP 1.6 schemas; raise the spec's error."""
    validator = get_validator(message_type_id, action, "1.6")
    error = best_match(validator.iter_errors(payload))
    if error is None:
        return
    cls = SCHEMA_ERRORS.get(error.validator, PropertyConstraintViolationError)
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    raise cls(description=f"{where}: {error.message}"[:500], details={"property": where})


class FramedChargePoint(ChargePoint):
    """A charger's connection, frame by frame: checks, answers, and the hand-over to a handler."""

    def __init__(self, charger_id, connection, response_timeout, log, pending):
        super().__init__(charger_id, connection, response_timeout=response_timeout,
                         logger=quiet)
        self.pending = pending
        self.log = log

    def frame_received(self):
        """Called for every frame before it is routed (the central system notes last-seen)."""

    async def start(self):
        try:
            async for message in self.connection:
                self.frame_received()
                await self.route_message(message)
        except ConnectionClosed:
            pass

    async def _send_error(self, unique_id, error):
        frame = CallError(unique_id, error.code, error.description, error.details or {})
        self.log.info("%s: CALLERROR %s %s", self.id, error.code, error.description)
        await self.send_frame(frame.to_json())

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
                                 self.id, redact_text(raw))
                return
            if not self.awaiting_answer():
                self.log.warning("%s: answer to no outstanding call dropped: %.200s", self.id,
                                 redact_text(raw))
                return
            msg = CallResult(uid, frame[2]) if type_id == 3 else \
                CallError(uid, frame[2], frame[3], frame[4] if len(frame) > 4 else {})
            self.deliver_answer(msg)
            return
        await self._send_error(uid, PropertyConstraintViolationError(
            description=f"MessageTypeId {type_id} is not CALL (2), CALLRESULT (3) or CALLERROR (4)"))

    async def _handle_frame(self, unique_id, action, payload):
        handler = self.handler_for(action)
        if handler is None:
            if action in V16_ACTIONS:
                raise NotSupportedError(
                    description=f"{action} is recognised but not supported by this central system")
            raise OcppNotImplemented(description=f"{action[:60]!r} is not an OCPP 1.6 action")
        validate(2, action, payload)
        if self.pending and action not in PENDING_ALLOWED:
            raise SecurityError(description=f"{self.id} is not registered (Pending): {action} refused")
        try:
            response = await handler(**camel_to_snake_case(payload))
        except OCPPError:
            raise
        except ValueError as e:  # the store's refusals (StoreError) among them
            raise PropertyConstraintViolationError(description=str(e)[:500]) from None
        except ArithmeticError:  # OverflowError: a JSON integer SQLite's 64 bits cannot hold
            raise PropertyConstraintViolationError(
                description=f"{action}: a number is out of range (64-bit integer)") from None
        except Exception:
            self.log.exception("%s: %s handler failed", self.id, action)
            raise InternalError(description=f"{action} could not be processed") from None
        body = snake_to_camel_case(remove_nones(serialize_as_dict(response)))
        validate(3, action, body)
        await self.send_frame(CallResult(unique_id, body, action).to_json())
