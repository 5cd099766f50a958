"""The device messages on CPython: protocol.messages (ack, cmd), protocol.offer (the update
offer), protocol.console (serial lines) and the gateway's builders and reply reader in
protocol.messages_gateway: the shared vectors, the bytes the gateway has always sent, and
malformed, truncated, oversized and hostile input.

The same vectors run under MicroPython in tests/mp/mp_test_messages.py.
"""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import console, offer
from protocol import messages as m
from protocol import messages_gateway as g

V = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "messages.json").read_text())

seqs = st.integers(min_value=0, max_value=m.MAX_SEQ)
versions = st.tuples(*[st.integers(0, 999999)] * 3).map(lambda t: ".".join(map(str, t)))
hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,40}", fullmatch=True)
paths = st.from_regex(r"/[A-Za-z0-9._/-]{0,80}", fullmatch=True)
urls = st.builds(lambda h, p, path: f"http://{h}:{p}{path}", hosts, st.integers(1, 65535), paths)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)




def builder(name):
    """A builder of the vectors by name (all are the gateway's)."""
    return getattr(g, name)


# ------------------------------------------------------------------ shared vectors

@pytest.mark.parametrize("name,args,text", V["build"])
def test_builders_give_the_vector_bytes(name, args, text):
    assert builder(name)(*args) == text


@pytest.mark.parametrize("name,args", V["build_refused"])
def test_builders_refuse_what_the_device_would(name, args):
    with pytest.raises(m.MessageError):
        builder(name)(*args)


@pytest.mark.parametrize("text,seq", V["ack_valid"])
def test_ack_vectors(text, seq):
    assert m.parse_ack(text.encode()) == seq == m.parse_ack(text)


@pytest.mark.parametrize("text", V["ack_invalid"])
def test_ack_invalid_vectors(text):
    with pytest.raises(m.MessageError):
        m.parse_ack(text.encode())


@pytest.mark.parametrize("text,cmd", V["cmd_valid"])
def test_cmd_vectors(text, cmd):
    assert m.parse_cmd(text.encode())["cmd"] == cmd


@pytest.mark.parametrize("text", V["cmd_invalid"])
def test_cmd_invalid_vectors(text):
    with pytest.raises(m.MessageError):
        m.parse_cmd(text.encode())


@pytest.mark.parametrize("msg,where", V["update_valid"])
def test_update_vectors(msg, where):
    assert offer.parse(msg) == {k: msg[k] for k in ("url", "version", "size")}
    assert offer.parse_url(msg["url"]) == tuple(where)


@pytest.mark.parametrize("msg", V["update_invalid"])
def test_update_invalid_vectors(msg):
    with pytest.raises(m.MessageError):
        offer.parse(msg)


@pytest.mark.parametrize("text,cmd", V["request_valid"])
def test_request_vectors(text, cmd):
    assert console.parse_request(text.encode())["cmd"] == cmd


@pytest.mark.parametrize("text,reason", V["request_invalid"])
def test_request_invalid_vectors_keep_the_device_texts(text, reason):
    with pytest.raises(m.MessageError) as e:
        console.parse_request(text.encode())
    assert str(e.value) == reason


@pytest.mark.parametrize("msg,line", V["console_request"])
def test_console_request_vectors(msg, line):
    assert g.console_request(msg) == line.encode()


@pytest.mark.parametrize("msg", V["console_request_refused"])
def test_console_request_refused_vectors(msg):
    with pytest.raises(m.MessageError):
        g.console_request(msg)


@pytest.mark.parametrize("text,obj", V["reply_valid"])
def test_reply_vectors(text, obj):
    assert g.parse_reply(text.encode()) == obj == g.parse_reply(text)


@pytest.mark.parametrize("text", V["reply_not_a_reply"])
def test_lines_that_are_not_replies(text):
    assert g.parse_reply(text.encode()) is None


@pytest.mark.parametrize("text", V["reply_invalid"])
def test_reply_invalid_vectors(text):
    with pytest.raises(m.MessageError):
        g.parse_reply(text.encode())


# ------------------------------------------------- the bytes the gateway always sent

@given(seqs)
def test_ack_is_what_json_dumps_wrote(seq):
    assert g.ack(seq) == json.dumps({"seq": seq})
    assert m.parse_ack(g.ack(seq).encode()) == seq


@given(st.integers(min_value=1, max_value=m.MAX_SEQ))
def test_resend_is_what_json_dumps_wrote(first):
    text = g.resend(first)
    assert text == json.dumps({"cmd": "resend", "from": first})
    assert m.parse_cmd(text.encode()) == {"cmd": "resend", "from": first}


@given(urls, versions, st.integers(1, offer.MAX_BUNDLE))
def test_update_is_what_json_dumps_wrote(url, version, size):
    text = g.update(url, version, size)
    assert text == json.dumps({"cmd": "update", "url": url, "version": version, "size": size})
    msg = m.parse_cmd(text.encode())
    assert offer.parse(msg) == {"url": url, "version": version, "size": size}


@given(st.one_of(st.integers(1, 86400), st.floats(0.01, 86400)))
def test_set_interval_is_what_json_dumps_wrote(seconds):
    text = g.set_interval(seconds)
    assert text == json.dumps({"cmd": "set_interval", "interval_s": seconds})
    assert m.parse_cmd(text.encode())["interval_s"] == seconds


def test_reboot_and_the_offline_will():
    assert g.reboot() == json.dumps({"cmd": "reboot"})
    assert m.parse_cmd(g.reboot().encode()) == {"cmd": "reboot"}
    assert json.loads(m.OFFLINE) == {"state": "offline"}
    assert m.OFFLINE == b'{"state":"offline"}'          # the device's will, byte for byte


def test_console_request_is_what_json_dumps_wrote():
    req = {"cmd": "provision", "device_id": "m1", "community": "c1",
           "wifi": {"ssid": "cellar", "password": "p{[\"x"}, "meter": {"model": "sdm630"}}
    assert g.console_request(req) == json.dumps(req).encode() + b"\n"
    assert console.parse_request(g.console_request(req)) == req
    with pytest.raises(m.MessageError, match="at most 2048"):
        g.console_request(dict(req, pad="x" * console.MAX_LINE))


# ------------------------------------------------------------------ hostile input

def test_sequence_bounds():
    assert m.parse_ack(b'{"seq": 9223372036854775807}') == m.MAX_SEQ == 2 ** 63 - 1
    for bad in (b'{"seq": 9223372036854775808}', b'{"seq": -1}', b'{"seq": 1e400}',
                b'{"seq": NaN}', b'{"seq": Infinity}', b"-0.0"):
        with pytest.raises(m.MessageError):
            m.parse_ack(bad)
    with pytest.raises(m.MessageError):
        m.parse_cmd(b'{"cmd": "resend", "from": 9223372036854775808}')


def test_unknown_commands_say_what_is_known():
    with pytest.raises(m.MessageError, match=r'unknown command "format_disk"; known: resend, '
                                             r'set_interval, reboot, update'):
        m.parse_cmd(b'{"cmd": "format_disk"}')
    with pytest.raises(m.MessageError, match=r"unknown command \(none\)"):
        m.parse_cmd(b'{"seq": 5}')


@pytest.mark.parametrize("parse,limit", [(m.parse_ack, m.MAX_MESSAGE), (m.parse_cmd, m.MAX_MESSAGE),
                                         (g.parse_reply, g.MAX_REPLY)])
def test_oversized_is_refused_before_decoding(parse, limit):
    pad = b"x" * limit
    with pytest.raises(m.MessageError, match="at most"):
        parse(b'{"seq": 1, "cmd": "reboot", "pad": "' + pad + b'"}')
    with pytest.raises(m.MessageError, match="at most"):
        parse('{"a": "' + "\u00e9" * (limit // 2) + '"}')     # text is measured as UTF-8
    with pytest.raises(m.MessageError, match="at most"):
        parse(b"{" * (limit + 1))


def test_oversized_console_line_keeps_the_device_text():
    with pytest.raises(m.MessageError, match=r"^line too long \(max 2048 bytes\)$"):
        console.parse_request(b"{" + b" " * 3000 + b"}")
    with pytest.raises(m.MessageError, match=r"^line too long"):
        console.parse_request(None)           # what the device's line reader gives for one


@pytest.mark.parametrize("parse", [m.parse_ack, m.parse_cmd, console.parse_request, g.parse_reply])
def test_deep_nesting_is_refused_before_decoding(parse):
    for text in (b'{"a": ' + b"[" * 1000, b"{" + b'"a":[' * 9 + b"1" + b"]" * 9 + b"}",
                 b'{"cmd": ' + b"[" * 500 + b"]" * 500 + b"}"):
        with pytest.raises(m.MessageError, match="nested deeper"):
            parse(text)
    # brackets inside strings are text, not nesting
    assert g.parse_reply(b'{"ok": true, "error": "' + b"[{" * 300 + b'"}')["ok"] is True


def test_not_utf8_and_wrong_types():
    for parse in (m.parse_ack, m.parse_cmd, g.parse_reply):
        with pytest.raises(m.MessageError, match="UTF-8"):
            parse(b'{"seq": 1, "x": "\xff"}')
        for value in (None, 5, 1.5, ["x"], {"seq": 1}):
            with pytest.raises(m.MessageError, match="bytes or text"):
                parse(value)
    with pytest.raises(m.MessageError, match="^not JSON: send one JSON object per line$"):
        console.parse_request(b'{"cmd": "\xff"}')


@pytest.mark.parametrize("whole", [g.ack(123).encode(), g.resend(45).encode(),
                                   g.update("http://gw:8080/f.tar", "0.2.0", 100).encode(),
                                   g.console_request({"cmd": "status"}).strip()])
def test_every_truncation_is_refused(whole):
    for cut in range(1, len(whole)):
        part = whole[:cut]
        for parse in (m.parse_ack, m.parse_cmd, console.parse_request):
            try:
                parse(part)
            except m.MessageError:
                continue
            # a prefix that is itself a whole message ("12" of "123") is fine
            assert part.isdigit() and parse is m.parse_ack, part


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_value_or_message_error(data):
    for parse in (m.parse_ack, m.parse_cmd, console.parse_request, g.parse_reply):
        try:
            parse(data)
        except m.MessageError:
            pass


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_gives_a_checked_value_or_message_error(value):
    text = json.dumps(value).encode()
    try:
        seq = m.parse_ack(text)
        assert isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= m.MAX_SEQ
    except m.MessageError:
        pass
    try:
        msg = m.parse_cmd(text)
        assert msg["cmd"] in m.COMMANDS
    except m.MessageError:
        pass
    try:
        assert console.parse_request(text)["cmd"] in console.COMMANDS
    except m.MessageError:
        pass
    if isinstance(value, dict):
        try:
            offer.parse(value)
        except m.MessageError:
            pass


def test_message_error_is_value_error():
    assert issubclass(m.MessageError, ValueError)
