"""protocol.topics on CPython: the shared vectors and property tests.

The same vectors run under MicroPython in tests/mp/mp_test_topics.py.
"""
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import topics

V = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "topics.json").read_text())
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

ids = st.from_regex(ID_RE, fullmatch=True)
kinds = st.sampled_from(topics.KINDS)


@pytest.mark.parametrize("text,community,device,kind", V["valid"])
def test_valid_vectors(text, community, device, kind):
    assert topics.topic(community, device, kind) == text
    assert topics.parse(text) == (community, device, kind)
    assert topics.parse(text.encode()) == (community, device, kind)


@pytest.mark.parametrize("text", V["invalid_topics"])
def test_invalid_topic_vectors(text):
    with pytest.raises(topics.TopicError):
        topics.parse(text)


@pytest.mark.parametrize("value", V["invalid_ids"])
def test_invalid_id_vectors(value):
    with pytest.raises(topics.TopicError):
        topics.check_id(value, "device")
    with pytest.raises(topics.TopicError):
        topics.topic("c1", value, "ocmf")
    with pytest.raises(topics.TopicError):
        topics.topic(value, "d1", "ocmf")


def test_kinds_are_the_documented_four():
    assert set(topics.KINDS) == set(V["kinds"]) == {"ocmf", "status", "ack", "cmd"}


def test_error_messages_name_the_problem():
    with pytest.raises(topics.TopicError, match="device 'a/b' contains '/'"):
        topics.check_id("a/b", "device")
    with pytest.raises(topics.TopicError, match="community is empty"):
        topics.topic("", "d", "ocmf")
    with pytest.raises(topics.TopicError, match="at most 64"):
        topics.check_id("x" * 65, "device")
    with pytest.raises(topics.TopicError, match="start with a letter or digit"):
        topics.check_id(".hidden", "device")
    with pytest.raises(topics.TopicError, match="kind 'nope'"):
        topics.parse("egs/v1/c/d/nope")
    with pytest.raises(topics.TopicError, match="version 'v2'"):
        topics.parse("egs/v2/c/d/ocmf")
    with pytest.raises(topics.TopicError, match="form egs/v1/<community>/<device>/<kind>"):
        topics.parse("egs/v1/c/d")
    with pytest.raises(topics.TopicError, match="must be a string"):
        topics.check_id(7, "device")
    with pytest.raises(topics.TopicError, match="UTF-8"):
        topics.parse(b"egs/v1/c/\xff/ocmf")
    assert issubclass(topics.TopicError, ValueError)


def test_subscription_matches_every_device_topic():
    sub = topics.subscription("c1", "status")
    assert sub == "egs/v1/c1/+/status"
    with pytest.raises(topics.TopicError):
        topics.subscription("c1", "everything")
    with pytest.raises(topics.TopicError):
        topics.subscription("+", "ocmf")


@given(ids, ids, kinds)
def test_round_trip(community, device, kind):
    text = topics.topic(community, device, kind)
    assert topics.parse(text) == (community, device, kind)
    # the gateway's subscription filter matches it (MQTT '+' = exactly one level)
    pattern = topics.subscription(community, kind).replace("+", "[^/]+")
    assert re.fullmatch(pattern, text)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.lists(st.text(max_size=12), max_size=7).map("/".join),
                 st.none(), st.integers()))
def test_parse_only_raises_topic_error(value):
    try:
        community, device, kind = topics.parse(value)
    except topics.TopicError:
        return
    # whatever is accepted is exactly what the builder would produce
    assert ID_RE.fullmatch(community) and ID_RE.fullmatch(device) and kind in topics.KINDS
    text = value.decode() if isinstance(value, bytes) else value
    assert topics.topic(community, device, kind) == text


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_check_id_accepts_exactly_the_safe_set(value):
    ok = ID_RE.fullmatch(value) is not None
    try:
        assert topics.check_id(value, "id") == value
        accepted = True
    except topics.TopicError:
        accepted = False
    assert accepted == ok, value
    if accepted:
        assert not set(value) & set("/+#\x00 ")
