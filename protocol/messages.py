"""The small JSON messages from gateway to device over MQTT: the device's side, parsed strictly.

The parsers (`parse_ack`, `parse_cmd`; `decode` under each, also for the console) take bytes
or text, refuse it over MAX_MESSAGE or nested deeper than MAX_DEPTH before decoding (a
device has a few tens of KB of heap), check types and bounds, and raise MessageError with a
one-line reason. Fields a parser does not know are ignored (a later gateway may add some);
commands it does not know are refused. The gateway builds these messages with
protocol/messages_gateway.py, which checks them with the same functions.

Why the device's side alone: the device keeps this module loaded (every ack goes through
it), and on MicroPython each function costs heap even when its code sits in flash, about
100 bytes; the builders, which only the gateway runs, cost the device nearly 1 KB here.
"""
import json

# Gateway -> device (topics in protocol/topics.py):
#   .../ack  {"seq": N}                                 highest sequence durably stored
#   .../cmd  {"cmd": "resend", "from": N}               send every record from N again
#            {"cmd": "set_interval", "interval_s": S}   0.01 <= S <= 86400, persisted
#            {"cmd": "reboot"}
#            {"cmd": "update", "url": "http://host:port/path", "version": "X.Y.Z",
#             "size": N}                                a signed release: protocol/offer.py
# Device -> gateway: .../status is a retained JSON object (firmware/app.py); the last will
# is OFFLINE. The serial console's lines are protocol/console.py.

MAX_SEQ = 9223372036854775807    # 2**63 - 1: the gateway stores sequences as SQLite INTEGER
MAX_MESSAGE = 1024               # an ack or cmd payload (the device's MQTT packet limit)
MAX_DEPTH = 8                    # nesting of arrays and objects in any message
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 86400
COMMANDS = ("resend", "set_interval", "reboot", "update")
OFFLINE = b'{"state":"offline"}'


class MessageError(ValueError):
    """A message that does not fit the contract; the text says what is wrong."""


def check_seq(value, what, low=0):
    """`value` if it is a sequence number (an int, not a bool) from `low` to MAX_SEQ."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SEQ:
        raise MessageError("%s must be an integer from %d to %d" % (what, low, MAX_SEQ))
    return value


def check_interval(value):
    """`value` if it is a reading interval in seconds (int or float) in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        raise MessageError("interval_s must be a number from 0.01 to 86400")
    return value


def decode(data, limit, what, bad=None):
    """The JSON value of message `data` (bytes, or text as UTF-8) of at most `limit` bytes
    and MAX_DEPTH levels; MessageError naming `what` otherwise (`bad` replaces the reason
    when it is not UTF-8 JSON).

    The depth is checked before decoding: MicroPython's json.loads takes about 70 bytes of
    heap per level, so a 1 KB "[[[[..." payload would need more than a device has free.
    Brackets inside strings do not count."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("%s must be bytes or text, not %s" % (what, type(data).__name__))
    if len(data) > limit:
        raise MessageError("%s is %d bytes, at most %d allowed" % (what, len(data), limit))
    depth = 0
    quoted = escaped = False
    for b in data:                        # bytes: small ints, nothing allocated
        if quoted:
            if escaped:
                escaped = False
            elif b == 92:                 # backslash
                escaped = True
            elif b == 34:                 # "
                quoted = False
        elif b == 34:
            quoted = True
        elif b == 91 or b == 123:         # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise MessageError("%s is nested deeper than %d levels" % (what, MAX_DEPTH))
        elif b == 93 or b == 125:         # ] }
            depth -= 1
    try:
        return json.loads(bytes(data).decode())
    except UnicodeError:
        raise MessageError(bad or "%s is not UTF-8" % what)
    except (ValueError, RuntimeError):    # CPython's RecursionError is a RuntimeError
        raise MessageError(bad or "%s is not JSON" % what)


def parse_ack(payload):
    """The sequence of an ack payload {"seq": N} (a bare N is accepted too)."""
    msg = decode(payload, MAX_MESSAGE, "ack")
    return check_seq(msg.get("seq") if isinstance(msg, dict) else msg, "ack seq")


def parse_cmd(payload):
    """The command object of a .../cmd payload, its fields checked. An update's fields are
    checked when the update runs (protocol/offer.py, from firmware/ota.py), so that a
    refused offer is reported in the status rather than only counted."""
    msg = decode(payload, MAX_MESSAGE, "cmd")
    if not isinstance(msg, dict):
        raise MessageError("cmd is not a JSON object")
    cmd = msg.get("cmd")
    if cmd == "resend":
        check_seq(msg.get("from"), "resend from", 1)
    elif cmd == "set_interval":
        check_interval(msg.get("interval_s"))
    elif not isinstance(cmd, str) or cmd not in COMMANDS:
        raise MessageError("unknown command %s; known: %s" % (
            "(none)" if cmd is None else json.dumps(cmd), ", ".join(COMMANDS)))
    return msg
