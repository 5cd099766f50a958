"""Provisioning over the serial console.

The bench provisioned the device with `egs-gw device provision --port <console>` (the
installer's command, pyserial on the device's console): a device with no configuration
answered `hello`, made its key on the device, returned only the public key, and was
registered with it. This test checks what that left behind and that the console stays
safe to talk to: bad lines get one clear JSON error and change nothing, and provisioning
again keeps the device's key and registration.
"""
import json
import stat

from protocol import ocmf


def test_device_provisioned_over_its_serial_console(bench):
    label = bench.provisioned["label"]
    hello_before = bench.provisioned["hello"]
    assert label["id"] == bench.device_id and label["platform"] == bench.device.platform
    assert label["key"] in ("generated", "kept")
    if not hello_before["has_key"]:
        assert bench.provisioned["pubkey_before"]["ok"] is False, "no key before provisioning"
        assert label["key"] == "generated", "a device without a key makes one when provisioned"

    with bench.device.console() as con:
        hello = con.ask({"cmd": "hello"})
        assert hello["ok"] and hello["provisioned"] and hello["has_key"]
        assert hello["device_id"] == bench.device_id
        pubkey = con.ask({"cmd": "pubkey"})["pubkey"]

        # the key the gateway registered is the device's, as its console reports it
        device = bench.stack.gw("device", "show", "--id", bench.device_id)
        assert device["pubkey"] == pubkey == label["pubkey"]
        assert label["fingerprint"] == ocmf.key_fingerprint(bytes.fromhex(pubkey))
        assert device["meter_serial"] == label["meter_serial"]
        assert bench.meter.serial_matches(label["meter_serial"]), "serial read from the meter"

        status = con.ask({"cmd": "status"})
        assert str(status["meter_serial"]) == str(label["meter_serial"]), "the meter it reads"
        assert status["config"]["device_id"] == bench.device_id
        assert status["config"]["mqtt"]["password"] == "***", "no secret on the console"
        before = status["config"]

        # bad lines: one JSON error each, nothing changed
        for line, reason in [
            (b"provision please", "not JSON"),
            (b"[1, 2, 3]", "object"),
            (json.dumps({"cmd": "format-flash"}), "unknown command"),
            (json.dumps({"cmd": "provision", "meter": {"model": "no-such-meter"}}), "meter.model"),
            (json.dumps({"cmd": "provision", "broker": {"port": 0}}), "broker.port"),
            (json.dumps({"cmd": "provision", "device_id": "a/b#"}), "device_id"),
            (json.dumps({"cmd": "provision", "interval": 1}), "unknown key interval"),
            (b"{" + b" " * 4000 + b"}", "too long"),
        ]:
            reply = con.ask(line)
            assert reply["ok"] is False and reason in reply["error"], (line[:40], reply)
        assert con.ask({"cmd": "status"})["config"] == before
        assert con.ask({"cmd": "pubkey"})["pubkey"] == pubkey
        transcript = b"\n".join(con.transcript)

    password = bench.stack.broker_dir / "credentials" / f"{bench.device_id}.password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert password.read_text().strip().encode() not in transcript

    # the readings it signs verify with the key it gave over the console, and only with it
    rows = bench.query("SELECT raw FROM readings WHERE device_id=? ORDER BY seq LIMIT 3",
                       bench.device_id)
    assert rows, "no reading stored"
    for r in rows:
        rec = ocmf.verify(r["raw"], ocmf.load_public_key(pubkey))
        assert rec.gateway_serial == bench.device_id

    # provisioning again (e.g. a new Wi-Fi password) keeps the key and the registration
    seq = bench.contiguous_top()
    again = bench.stack.gw(*bench.provision_args())
    assert again["key"] == "kept" and again["pubkey"] == pubkey
    assert again["registration"] == "already registered (same key)"
    bench.device.wait_console(60)
    bench.wait_stored(seq + 2, what="readings after provisioning again")
