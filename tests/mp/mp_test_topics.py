"""protocol.topics under MicroPython, on the shared vectors (tests/vectors/topics.json).

Run: micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_topics.py
"""
import json

from protocol import topics

_V = None


def vectors():
    global _V
    if _V is None:
        with open("tests/vectors/topics.json") as f:
            _V = json.load(f)
    return _V


def test_build_and_parse_valid_topics():
    for text, community, device, kind in vectors()["valid"]:
        assert topics.topic(community, device, kind) == text
        assert topics.parse(text) == (community, device, kind)
        assert topics.parse(text.encode()) == (community, device, kind)


def test_invalid_topics_raise_topic_error():
    for text in vectors()["invalid_topics"]:
        try:
            topics.parse(text)
        except topics.TopicError:
            continue
        raise AssertionError(f"accepted {text!r}")


def test_ids():
    v = vectors()
    for good in v["valid_ids"]:
        assert topics.check_id(good, "device") == good
    for bad in v["invalid_ids"]:
        try:
            topics.check_id(bad, "device")
        except topics.TopicError:
            continue
        raise AssertionError(f"accepted id {bad!r}")


def test_builders_refuse_bad_ids_and_kinds():
    for args in (("c/1", "d", "ocmf"), ("c", "+", "ocmf"), ("c", "d", "nope"), ("", "d", "ack")):
        try:
            topics.topic(*args)
        except topics.TopicError:
            continue
        raise AssertionError(f"built {args!r}")


def test_subscription():
    assert topics.subscription("c1", "ocmf") == "egs/v1/c1/+/ocmf"
    for kind in vectors()["kinds"]:
        assert topics.subscription("c1", kind).endswith("/+/" + kind)
    try:
        topics.subscription("c#", "ocmf")
    except topics.TopicError:
        return
    raise AssertionError("subscription accepted c#")


def test_topic_error_is_value_error():
    assert issubclass(topics.TopicError, ValueError)
