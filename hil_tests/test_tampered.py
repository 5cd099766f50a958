"""A tampered record injected on the broker is rejected: quarantined with its reason, never
stored as a reading, never settled, and the genuine record is still accepted.

The attacker holds the device's MQTT credential (a stolen password: the broker's ACL lets
it publish on the device's own ocmf topic) but not the device's key, which never left
the device.
"""
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hil_tests.targets import COMMUNITY, wait_for
from protocol import ocmf


def publish_as_device(bench, payloads):
    import paho.mqtt.client as mqtt

    password = (bench.stack.broker_dir / "credentials" / f"{bench.device_id}.password").read_text().strip()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-intruder")
    c.username_pw_set(bench.device_id, password)
    c.connect(bench.stack.broker_host, bench.stack.broker_port, keepalive=10)
    c.loop_start()
    try:
        for payload in payloads:
            info = c.publish(f"egs/v1/{COMMUNITY}/{bench.device_id}/ocmf", payload, qos=1)
            info.wait_for_publish(10)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
    finally:
        c.disconnect()
        c.loop_stop()


def forge(raw, import_delta):
    """The same record with its import register raised, signature kept."""
    rec = ocmf.parse(raw)
    payload = json.loads(rec.payload_bytes)
    for rd in payload["RD"]:
        if rd["RI"] == "1-0:1.8.0":
            rd["RV"] = round(rd["RV"] + import_delta / 1000, 3)
    body = json.dumps(payload, separators=(",", ":"))
    return "OCMF|" + body + "|" + json.dumps(rec.signature, separators=(",", ":"))


def sign_with(key, payload_bytes):
    der = key.sign(payload_bytes, ec.ECDSA(hashes.SHA256()))
    return ("OCMF|" + payload_bytes.decode() + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"'
            + der.hex().upper() + '"}')


def test_tampered_records_on_the_broker_are_rejected(bench):
    dev = bench.device_id
    top = bench.wait_stored(bench.contiguous_top())
    genuine = bench.query("SELECT raw FROM readings WHERE device_id=? AND seq=?", dev, top)[0]["raw"]
    original = ocmf.parse(genuine)

    # 1. a stored reading with its import register raised by 5 kWh
    raised = forge(genuine, 5000)
    # 2. the device's *next* reading, made up and signed with the intruder's own key
    intruder = ec.generate_private_key(ec.SECP256R1())
    nxt = bench.device.status()["seq"] + 4      # not signed yet: the intruder is first
    made_up = sign_with(intruder, ocmf.build_payload(
        nxt, original.import_wh, original.export_wh + 10**6, original.time_epoch + 1,
        gi="EGS-ESP32-MP", gs=dev, gv="0.1.0", mv="Eastron", mm="SDM630",
        ms=original.meter_serial))
    # 3. the genuine record replayed: a duplicate, acknowledged again, stored once
    before = bench.query("SELECT COUNT(*) FROM readings WHERE device_id=?", dev)[0][0]
    publish_as_device(bench, [raised, made_up, genuine])

    bad = wait_for(lambda: len(bench.quarantine({"bad_signature"})) >= 2 and
                   bench.quarantine({"bad_signature"}), 30, "both forgeries quarantined")
    raws = {q["raw"].decode() if isinstance(q["raw"], bytes) else q["raw"]: q for q in bad}
    assert raised in raws and made_up in raws
    assert raws[raised]["seq"] == top and raws[made_up]["seq"] == nxt
    assert all(q["device_id"] == dev and q["detail"] for q in bad)
    events = bench.stack.gw("events", "--device", dev)
    kinds = json.dumps(events)
    assert "bad_signature" in kinds, "logged as a security event"

    # the genuine records keep coming, including the one the intruder tried to pre-empt
    bench.wait_stored(nxt + 1, what=f"the device's own reading {nxt} stored")
    rows = bench.query("SELECT seq, raw, import_wh FROM readings WHERE device_id=? ORDER BY seq",
                       dev)
    by_seq = {r["seq"]: r for r in rows}
    assert by_seq[top]["raw"] == genuine, "the stored reading is unchanged"
    assert by_seq[nxt]["raw"] != made_up
    pub = ocmf.load_public_key(bench.device.ask({"cmd": "pubkey"})["pubkey"])
    ocmf.verify(by_seq[nxt]["raw"], pub)
    assert len(rows) > before and len(rows) == len(by_seq), "stored once"
    assert not any(r["raw"] in (raised, made_up) for r in rows)
