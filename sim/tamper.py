"""The demo's attacker: one device's broker credential, three bad records.

Halfway through the day (sim/community.py) someone who holds a device's MQTT password
publishes on its topic a copy of its latest stored record with 50 kWh more export (the
signature kept, so it no longer matches), the genuine record again (a replay), and the
forged record cut off halfway (bad input). The invariants (sim/invariants.py) then check
that the first was quarantined as a bad signature, the second stored once, the third
quarantined as malformed, and that the gateway did not crash.
"""
import json

from gateway import clock

EXTRA_EXPORT_KWH = 50.0


def inject(conn, stack):
    """Publish the three records through the stack's broker; → what was sent (for the
    report and the invariants), or None when no reading is stored yet."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from protocol import ocmf

    row = conn.execute(
        "SELECT r.device_id, r.seq, r.raw FROM readings r JOIN devices d ON d.id=r.device_id "
        "WHERE r.export_wh > 0 ORDER BY r.id DESC LIMIT 1").fetchone()
    if row is None:
        row = conn.execute("SELECT device_id, seq, raw FROM readings ORDER BY id DESC LIMIT 1"
                           ).fetchone()
    if row is None:
        return None
    device, seq, raw = row["device_id"], row["seq"], row["raw"]
    rec = ocmf.parse(raw)
    payload = json.loads(rec.payload_bytes)
    for rd in payload["RD"]:
        if rd.get("RI") == "1-0:2.8.0":
            rd["RV"] = round(float(rd["RV"]) + EXTRA_EXPORT_KWH, 3)
    forged = "OCMF|" + json.dumps(payload, separators=(",", ":")) + "|" + json.dumps(
        rec.signature, separators=(",", ":"))
    truncated = forged[:len(forged) // 2]
    topic = f"egs/v1/{stack.community}/{device}/ocmf"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-intruder")
    client.username_pw_set(device, stack.credential(device, create=False))
    client.connect(stack.broker_host, stack.broker_port, keepalive=10)
    client.loop_start()
    try:
        for body in (forged, raw, truncated):
            client.publish(topic, body.encode(), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    return {"device": device, "seq": seq, "forged": forged, "replayed": raw,
            "truncated": truncated, "at": clock.now()}
