"""Malformed OCPP-J frames: each gets the CALLERROR the spec names, the connection survives."""
import json
import sys

import pytest

from tests.ocpp.fixtures import DEPOSIT, EV_ADDR, central, db, now_iso, raw_client, run, seed

CASES = [
    # (frame as sent, expected uniqueId in the answer, expected error code)
    ("this is not json", "-1", "FormationViolation"),
    ('[2, "a1", "Heartbeat", {}', "-1", "FormationViolation"),            # truncated
    ('{"not": "an array"}', "-1", "FormationViolation"),
    ("[]", "-1", "FormationViolation"),
    ('[2, "a2", "Heartbeat"]', "a2", "FormationViolation"),               # payload missing
    ('[2, "a3", "Heartbeat", {}, "extra"]', "a3", "FormationViolation"),
    ('[2, 17, "Heartbeat", {}]', "-1", "FormationViolation"),              # uniqueId a number
    (f'[2, "{"u" * 37}", "Heartbeat", {{}}]', "u" * 37, "FormationViolation"),
    ('[2, "a4", "Heartbeat", []]', "a4", "FormationViolation"),           # payload an array
    ('[2, "a5", 42, {}]', "a5", "FormationViolation"),                     # action a number
    ('["2", "a6", "Heartbeat", {}]', "a6", "TypeConstraintViolation"),    # type id a string
    ('[7, "a7", "Heartbeat", {}]', "a7", "PropertyConstraintViolation"),  # unknown type id
    ('[2, "a8", "FlyToTheMoon", {}]', "a8", "NotImplemented"),           # not an OCPP action
    ('[2, "a9", "Reset", {"type": "Hard"}]', "a9", "NotSupported"),     # CS → charger action
    ('[2, "b1", "Authorize", {}]', "b1", "ProtocolError"),                # required missing
    ('[2, "b2", "Authorize", {"idTag": 5}]', "b2", "TypeConstraintViolation"),
    ('[2, "b3", "Authorize", {"idTag": "T", "x": 1}]', "b3", "FormationViolation"),
    (('[2, "b4", "StatusNotification", {"connectorId": 1, "errorCode": "Oops", '
      '"status": "Available"}]'), "b4", "PropertyConstraintViolation"),
    ('[2, "b5", "MeterValues", {"connectorId": 1, "meterValue": []}]', "b5",
     "OccurenceConstraintViolation"),
    (('[2, "b6", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1.5, '
      '"timestamp": "2026-01-01T00:00:00Z"}]'), "b6", "TypeConstraintViolation"),
]


@pytest.mark.parametrize("group", [CASES[:10], CASES[10:]])
def test_malformed_frames_get_callerror_and_connection_survives(tmp_path, group):
    seed(tmp_path / "g.db", chargers=[("CP1", {})])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            for text, uid, code in group:
                answer = await c.send_raw(text)
                assert answer[0] == 4, (text, answer)
                assert (answer[1], answer[2]) == (uid, code), (text, answer)
                assert isinstance(answer[3], str) and isinstance(answer[4], dict)
                # the same connection still works after each bad frame
                assert (await c.ok("Heartbeat", {}))["currentTime"]
    run(go())


def test_binary_frames_stray_results_and_hostile_sizes(tmp_path):
    seed(tmp_path / "g.db", chargers=[("CP1", {})], tags=[("T1", EV_ADDR, DEPOSIT)])

    async def go():
        async with central(tmp_path / "g.db") as cs, raw_client(cs) as c:
            await c.ws.send(b'[2,"z1","Heartbeat",{}]')
            answer = json.loads(await c.ws.recv())
            assert answer[:3] == [4, "-1", "FormationViolation"]
            # a CALLRESULT / CALLERROR nobody asked for: dropped, nothing answered
            await c.ws.send('[3, "nobody-asked", {}]')
            await c.ws.send('[4, "nobody-asked", "GenericError", "", {}]')
            assert (await c.ok("Heartbeat", {}))["currentTime"]
            # deeply nested junk inside a valid action is a schema error, not a crash
            deep = {"idTag": "T1", "junk": [[[[[[[["x"]]]]]]]]}
            assert (await c.error("Authorize", deep)) == "FormationViolation"
            # hostile nesting (the C decoder would follow it down the C stack): an error,
            # and the connection lives
            answer = await c.send_raw("[" * 100_000 + "]" * 100_000)
            assert answer[:3] == [4, "-1", "FormationViolation"]
            answer = await c.send_raw('[2, "d1", "Heartbeat", ' + "{" * 6_000)
            assert answer[:3] == [4, "-1", "FormationViolation"]
            # nesting within the bracket budget but past the decoder's recursion limit
            # (the interpreter's default of 1000, as in `egs-gw`; the test run raises it)
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(1000)
            try:
                answer = await c.send_raw("[" * 3_000 + "]" * 3_000)
            finally:
                sys.setrecursionlimit(limit)
            assert answer[:3] == [4, "-1", "FormationViolation"]
            # NUL bytes and unicode in an idTag are just an unknown idTag
            res = await c.ok("Authorize", {"idTag": "\u0000\u202eevil"})
            assert res["idTagInfo"]["status"] == "Invalid"
            # a start the CS can still store after all of that
            res = await c.start({"connectorId": 1, "idTag": "T1",
                                                  "meterStart": 0, "timestamp": now_iso()})
            assert res["idTagInfo"]["status"] == "Accepted"
    run(go())
    assert db(tmp_path / "g.db").execute("SELECT COUNT(*) FROM ocpp_transactions").fetchone()[0] == 1
