"""The MQTT topic layout: egs/v1/<community>/<device>/<kind>, built and parsed strictly.

One definition for the firmware (MicroPython) and the gateway (CPython).  The
version sits in the path so that a later layout can run beside this one.

Ids (community, device) are 1..64 characters of A-Z a-z 0-9 _ . -, starting
with a letter or digit.  That keeps MQTT wildcards and separators (+ # /) out of
them, so a device can never publish into another device's subtree or subscribe
to everything, and keeps them usable as file names and ACL patterns ("." and
".." cannot occur).  Checked by hand rather than with `re`: MicroPython's `re`
lacks fullmatch and character-class ranges behave differently across ports.
"""

PREFIX = "egs"
VERSION = "v1"
KINDS = ("ocmf", "status", "ack", "cmd")
MAX_ID = 64

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ID_CHARS = _ALNUM + "_.-"


class TopicError(ValueError):
    """A topic or id that does not fit the layout; the message says what is wrong."""


def check_id(value, what="id"):
    """`value` if it is a valid community/device id, else TopicError."""
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise TopicError(f"{what} is empty")
    if len(value) > MAX_ID:
        raise TopicError(f"{what} is {len(value)} characters long, at most {MAX_ID} allowed")
    if value[0] not in _ALNUM:
        raise TopicError(f"{what} {value!r} must start with a letter or digit")
    for ch in value:
        if ch not in _ID_CHARS:
            raise TopicError(f"{what} {value!r} contains {ch!r}; allowed are A-Z a-z 0-9 _ . -")
    return value


def check_kind(kind):
    if kind not in KINDS:
        raise TopicError(f"message kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def topic(community, device, kind):
    """egs/v1/<community>/<device>/<kind>."""
    check_id(community, "community")
    check_id(device, "device")
    check_kind(kind)
    return f"{PREFIX}/{VERSION}/{community}/{device}/{kind}"


def subscription(community, kind):
    """egs/v1/<community>/+/<kind>: the gateway's filter for one kind from every device."""
    check_id(community, "community")
    check_kind(kind)
    return f"{PREFIX}/{VERSION}/{community}/+/{kind}"


def parse(value):
    """(community, device, kind) of a topic string (or UTF-8 bytes); TopicError otherwise."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeError:
            raise TopicError("topic is not UTF-8") from None
    if not isinstance(value, str):
        raise TopicError(f"topic must be a string, not {type(value).__name__}")
    parts = value.split("/")
    if len(parts) != 5:
        raise TopicError(f"topic {value[:80]!r} does not have the form "
                         f"{PREFIX}/{VERSION}/<community>/<device>/<kind>")
    if parts[0] != PREFIX:
        raise TopicError(f"topic {value[:80]!r} does not start with {PREFIX}/")
    if parts[1] != VERSION:
        raise TopicError(f"topic {value[:80]!r} has layout version {parts[1][:16]!r}, "
                         f"this code speaks {VERSION}")
    community = check_id(parts[2], "community")
    device = check_id(parts[3], "device")
    return community, device, check_kind(parts[4])
