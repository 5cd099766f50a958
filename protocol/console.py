"""The serial console's line protocol, the device's side: one JSON object per line each way.

A request is {"cmd": <one of COMMANDS>, ...} (the commands are firmware/provision.py's),
a reply {"ok": true, ...} or {"ok": false, "error": "<reason>"}; lines the device prints
for people never start with "{". The device reads a request with `parse_request` and
refuses one with `error_reply`; the gateway writes requests and reads replies with
protocol/messages_gateway.py. Refusals are protocol.messages.MessageError with a one-line
reason; size and nesting are checked by protocol.messages.decode.

A module of its own: the device imports it only while it answers a console line and
forgets it afterwards (firmware/heap.py), so it takes no heap between provisioning
sessions.
"""
import json

from protocol.messages import MessageError, decode

MAX_LINE = 2048                  # a request line, without its newline
COMMANDS = ("hello", "provision", "pubkey", "status", "reboot", "ca")


def parse_request(line):
    """The request object of one line (bytes or text; None: the line reader found it too
    long); its "cmd" is known."""
    if line is None or len(line) > MAX_LINE:
        raise MessageError("line too long (max %d bytes)" % MAX_LINE)
    msg = decode(line, MAX_LINE, "request", "not JSON: send one JSON object per line")
    if not isinstance(msg, dict):
        raise MessageError('expected a JSON object with a "cmd"')
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise MessageError("unknown command %s; known: %s" % (
            "(none)" if cmd is None else json.dumps(cmd), ", ".join(COMMANDS)))
    return msg


def error_reply(reason):
    """The reply refusing a request."""
    return {"ok": False, "error": reason}
