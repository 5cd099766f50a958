"""The gateway's side of the device messages: it builds what it sends and reads the console.

    ack(seq), resend(first), set_interval(seconds), reboot()   .../ack and .../cmd payloads
    update(url, version, size)                                  the update offer on .../cmd
    console_request(msg), parse_reply(line)                     the serial console's lines

Each builder gives the bytes the gateway has always sent (CPython's json.dumps spacing) and
checks its input with the device's own parser (protocol/messages.py, offer.py, console.py),
so it refuses what the device would refuse, with the same MessageError. The MQTT payloads
are written with `%`, so the shared vectors hold under MicroPython too (tests/mp).

Not on the device (firmware/manifest.py): its share of the contract lives in those three
modules, and code the device never runs would cost it heap, as protocol/ocmf_verify.py
would.
"""
import json

from protocol import console, offer
from protocol.messages import MessageError, check_interval, check_seq, decode

MAX_REPLY = 65536                # a console reply line (a status reply is about 1.5 KB)


def ack(seq):
    """The .../ack payload: the gateway has durably stored every record up to `seq`."""
    return '{"seq": %d}' % check_seq(seq, "ack seq")


def resend(first):
    """The .../cmd payload asking the device to send every record from `first` again."""
    return '{"cmd": "resend", "from": %d}' % check_seq(first, "resend from", 1)


def set_interval(seconds):
    """The .../cmd payload setting the reading interval (persisted by the device)."""
    return '{"cmd": "set_interval", "interval_s": %s}' % json.dumps(check_interval(seconds))


def reboot():
    """The .../cmd payload asking the device to restart."""
    return '{"cmd": "reboot"}'


def update(url, version, size):
    """The .../cmd payload offering the signed release at `url` (`size` bytes)."""
    offer.parse({"url": url, "version": version, "size": size})
    return '{"cmd": "update", "url": %s, "version": %s, "size": %d}' % (
        json.dumps(url), json.dumps(version), size)


def console_request(msg):
    """The line (bytes, with its newline) for a console request {"cmd": ..., ...}: json.dumps
    in the dict's order, as the gateway has always written it."""
    cmd = msg.get("cmd") if isinstance(msg, dict) else None
    if not isinstance(cmd, str) or cmd not in console.COMMANDS:
        raise MessageError("unknown console command %s; known: %s" % (
            "(none)" if cmd is None else json.dumps(cmd), ", ".join(console.COMMANDS)))
    line = json.dumps(msg).encode()
    if len(line) > console.MAX_LINE:
        raise MessageError("console request %s is %d bytes, the device reads at most %d"
                           % (cmd, len(line), console.MAX_LINE))
    return line + b"\n"


def parse_reply(line):
    """The object of a console reply line (bytes or text); None for a line that is not a
    reply (it does not start with "{": the device's log lines for people); MessageError for
    one that starts with "{" but is not a JSON object."""
    if isinstance(line, str):
        line = line.encode()
    elif not isinstance(line, (bytes, bytearray)):
        raise MessageError("console reply must be bytes or text, not %s" % type(line).__name__)
    line = bytes(line).strip()
    if line[:1] != b"{":
        return None
    msg = decode(line, MAX_REPLY, "console reply")
    if not isinstance(msg, dict):
        raise MessageError("console reply is not a JSON object")
    return msg
