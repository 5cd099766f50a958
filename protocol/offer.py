"""The firmware update offer, a .../cmd message, as the device checks it:

    {"cmd": "update", "url": "http://<gateway>:<port>/<name>.tar", "version": "X.Y.Z",
     "size": <bytes>}

The device checks it (`parse`, firmware/ota.py) before it downloads anything; the gateway
builds it with protocol/messages_gateway.py, which applies the same checks, so an offer
the device would refuse is never sent. Refusals are protocol.messages.MessageError. What
is offered, a signed bundle, is protocol/bundle.py.

A module of its own, apart from protocol/messages.py, which the device keeps loaded: the
device needs this only while an update runs and unloads it with the update code.
"""
from protocol.bundle import parse_version
from protocol.messages import MessageError

MAX_URL = 300
MAX_BUNDLE = 256 * 1024          # the largest bundle an offer may announce


def parse_url(url):
    """(host, port, path) of an offer's http://host[:port]/path."""
    if not isinstance(url, str) or not url.startswith("http://") or len(url) > MAX_URL:
        raise MessageError("update url must be http://host:port/path")
    rest = url[7:]
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = hostport, 80
    if ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        if not p or len(p) > 5 or any(c not in "0123456789" for c in p) \
                or not 0 < int(p) < 65536:
            raise MessageError("bad port in update url")
        port = int(p)
    if not host:
        raise MessageError("no host in update url")
    return host, port, path


def parse(msg):
    """The job {"url", "version", "size"} of an update command object (parsed JSON)."""
    if not isinstance(msg, dict):
        raise MessageError("update command is not an object")
    url, version, size = msg.get("url"), msg.get("version"), msg.get("size")
    parse_url(url)
    if not isinstance(version, str) or parse_version(version) is None:
        raise MessageError("bad version in update command")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BUNDLE:
        raise MessageError("bad size in update command")
    return {"url": url, "version": version, "size": size}
