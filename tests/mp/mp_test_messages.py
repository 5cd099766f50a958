"""protocol.messages, protocol.offer and protocol.console under MicroPython, on the shared
vectors (tests/vectors/messages.json) plus hostile input: the device parses every ack,
cmd, update offer and console line with this code. The gateway's builders
(protocol.messages_gateway, not on the device) give the same bytes here too.

Run: micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_messages.py
"""
import gc
import json

from protocol import console, offer
from protocol import messages as m
from protocol import messages_gateway as g

_V = None


def vectors():
    global _V
    if _V is None:
        with open("tests/vectors/messages.json") as f:
            _V = json.load(f)
    return _V


def builder(name):
    """A builder of the vectors by name (all are the gateway's)."""
    return getattr(g, name)


def _refused(fn, *args):
    try:
        fn(*args)
    except m.MessageError as e:
        return str(e)
    raise AssertionError("accepted %r" % (args,))


def test_builders_give_the_vector_bytes():
    for name, args, text in vectors()["build"]:
        assert builder(name)(*args) == text, (name, args)


def test_builders_refuse_what_the_device_would():
    for name, args in vectors()["build_refused"]:
        _refused(builder(name), *args)


def test_built_messages_parse_back():
    for name, args, text in vectors()["build"]:
        if name == "ack":
            assert m.parse_ack(text.encode()) == args[0]
        else:
            msg = m.parse_cmd(text.encode())
            assert msg["cmd"] == name
            if name == "update":
                assert offer.parse(msg) == {"url": args[0], "version": args[1],
                                               "size": args[2]}


def test_ack():
    v = vectors()
    for text, seq in v["ack_valid"]:
        assert m.parse_ack(text.encode()) == seq, text
        assert m.parse_ack(text) == seq, text
    for text in v["ack_invalid"]:
        _refused(m.parse_ack, text.encode())


def test_cmd():
    v = vectors()
    for text, cmd in v["cmd_valid"]:
        assert m.parse_cmd(text.encode())["cmd"] == cmd, text
    for text in v["cmd_invalid"]:
        _refused(m.parse_cmd, text.encode())
    assert "format_disk" in _refused(m.parse_cmd, b'{"cmd": "format_disk"}')


def test_update():
    v = vectors()
    for msg, (host, port, path) in v["update_valid"]:
        assert offer.parse(msg)["url"] == msg["url"]
        assert offer.parse_url(msg["url"]) == (host, port, path)
    for msg in v["update_invalid"]:
        _refused(offer.parse, msg)


def test_console_requests_and_their_error_texts():
    v = vectors()
    for text, cmd in v["request_valid"]:
        assert console.parse_request(text.encode())["cmd"] == cmd
    for text, reason in v["request_invalid"]:
        assert _refused(console.parse_request, text.encode()) == reason, text
    assert _refused(console.parse_request, None) == "line too long (max 2048 bytes)"
    assert _refused(console.parse_request, b"{" + b" " * 3000 + b"}").startswith("line too long")
    assert console.error_reply("no") == {"ok": False, "error": "no"}


def test_console_replies():
    v = vectors()
    for text, obj in v["reply_valid"]:
        assert g.parse_reply(text.encode()) == obj
    for text in v["reply_not_a_reply"]:
        assert g.parse_reply(text.encode()) is None, text
    for text in v["reply_invalid"]:
        _refused(g.parse_reply, text.encode())


def test_hostile_bytes():
    # not UTF-8, oversized, truncated, deeply nested, wrong types: MessageError only
    for bad in (b"\xff\xfe", b'{"seq": "\xc3"}', b'{"cmd": "re\xffsend"}'):
        _refused(m.parse_ack, bad)
        _refused(m.parse_cmd, bad)
        _refused(console.parse_request, bad)
    big = b'{"seq": 1, "pad": "' + b"x" * m.MAX_MESSAGE + b'"}'
    assert "at most" in _refused(m.parse_ack, big)
    assert "at most" in _refused(m.parse_cmd, b"{" * (m.MAX_MESSAGE + 1))
    for depth in (100, 500, 1000):
        _refused(m.parse_cmd, b"[" * depth)
        _refused(m.parse_ack, b"[" * depth + b"]" * depth)
        _refused(console.parse_request, b'{"cmd": ' + b"[" * depth)
    whole = b'{"cmd": "resend", "from": 12}'
    for cut in range(len(whole)):
        try:
            m.parse_cmd(whole[:cut])
        except m.MessageError:
            continue
        raise AssertionError("accepted %r" % whole[:cut])
    for value in (None, 5, 1.5, [b"x"], {"seq": 1}):
        _refused(m.parse_ack, value)
        _refused(m.parse_cmd, value)


def test_offline_will():
    assert json.loads(m.OFFLINE) == {"state": "offline"}


def test_parsing_leaves_nothing_on_the_heap():
    """A flood of bad messages must not leak: the device parses each one it gets."""
    m.parse_ack(b'{"seq": 1}')
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(200):
        try:
            m.parse_cmd(b'{"cmd": "format_disk", "x": [1, 2, 3]}')
        except m.MessageError:
            pass
        m.parse_ack(b'{"seq": 123456}')
    gc.collect()
    assert gc.mem_alloc() - before < 512, gc.mem_alloc() - before
