"""`egs-gw device provision --port …`: configure a device over its serial console and register it.

Speaks the firmware's console protocol (firmware/provision.py, firmware/README.md): one
JSON object per line each way; reply lines start with "{", anything else the device
prints is ignored. Steps:

  1. hello                  the device answers (and says whether it has a key already);
  2. the broker credential  the device's MQTT password, generated once and kept 0600 in
                            <broker dir>/credentials/<device>.password;
  3. provision              device id, community, broker, credential, meter, Wi-Fi: the
                            device validates it, makes its key from its own RNG the first
                            time, and answers with the public key (the private key never
                            leaves the device);
  4. pubkey                 read back and compared, so a garbled line cannot register a
                            wrong key;
  5. meter serial           from --meter-serial, else the device reboots into its new
                            configuration and reports the serial it reads from the meter;
  6. register               the device in the store; its credential was added to the
                            broker's password file before the reboot (and mosquitto sent
                            SIGHUP when it runs from that directory);
  7. the label              device id, meter serial, key fingerprint.

Re-provisioning a registered device is allowed when it still has the same key
(configuration changes, e.g. a new Wi-Fi password).
"""
import time

from gateway.devices import broker as broker_mod
from gateway.ingest import settings, store
from protocol import messages_gateway


class ProvisionError(ValueError):
    pass


class Console:
    """The device's serial console (pyserial), one JSON request → one JSON reply."""

    def __init__(self, port, baud=115200, timeout=30.0):
        import serial

        self.timeout = timeout
        try:
            self.ser = serial.serial_for_url(port, baudrate=baud, timeout=0.2)
        except (serial.SerialException, ValueError) as e:
            raise ProvisionError(f"cannot open serial port {port}: {e}") from None
        self.buf = b""

    def close(self):
        self.ser.close()

    def _line(self, deadline):
        while b"\n" not in self.buf:
            if time.monotonic() > deadline:
                return None
            chunk = self.ser.read(self.ser.in_waiting or 1)
            self.buf += chunk
            if len(self.buf) > 1 << 20:
                raise ProvisionError("the device sends endless output without a newline")
        line, self.buf = self.buf.split(b"\n", 1)
        return line.strip()

    def request(self, msg, timeout=None):
        """The device's reply (a dict with "ok": true) to request `msg` (a dict with "cmd");
        the line format is protocol/console.py's, the device's own."""
        try:
            line = messages_gateway.console_request(msg)
        except messages_gateway.MessageError as e:
            raise ProvisionError(str(e)) from None
        self.ser.reset_input_buffer()
        self.buf = b""
        self.ser.write(line)
        self.ser.flush()
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self._line(deadline)
            if line is None:
                raise ProvisionError(f"no reply from the device to {msg['cmd']!r} within "
                                     f"{timeout or self.timeout:g} s (is it an EGS device on this port?)")
            try:
                reply = messages_gateway.parse_reply(line)
            except messages_gateway.MessageError:   # noise that starts with "{"
                continue
            if reply is None:               # the device's log lines for people
                continue
            if reply.get("ok") is not True:
                raise ProvisionError(f"device refused {msg['cmd']!r}: {reply.get('error', reply)}")
            return reply


def _broker_addr(value):
    host, port = settings.host_port(value, "--broker")
    return {"host": host, "port": port}


def provision(conn, port, device_id, *, community, broker, broker_dir, wifi_ssid="", wifi_password="",
              meter_model="sdm630", meter_address=1, meter_baud=9600, meter_serial=None, meter_link=None,
              interval_s=None, account=None, broker_tls=False, baud=115200, timeout=30.0):
    """Provision and register one device; returns its label (a dict)."""
    from protocol import topics
    from protocol.ocmf import key_fingerprint, load_public_key

    topics.check_id(device_id, "--id")
    topics.check_id(community, "--community")
    if account is not None:
        from gateway.accounts import normalize_address
        account = normalize_address(account)
    broker_cfg = dict(_broker_addr(broker), tls=bool(broker_tls))
    # before anything is handed out: the device gets the credential of the user named like it
    store.check_user_name(conn, device_id)
    known = store.get_device(conn, device_id)
    if known is not None and known["revoked"]:
        raise ProvisionError(f"device {device_id} is revoked; provision it under a new id")
    if known is None and meter_serial:
        store.check_meter_free(conn, meter_serial)
    from pathlib import Path
    if not (Path(broker_dir) / "passwd").exists():
        raise ProvisionError(f"no broker configuration in {broker_dir} "
                             f"(run `egs-gw broker config --out {broker_dir}` first, or give --broker-dir)")

    console = Console(port, baud, timeout)
    try:
        hello = console.request({"cmd": "hello"})
        password = broker_mod.credential(broker_dir, device_id)
        meter = {"model": meter_model, "unit": meter_address, "baud": meter_baud}
        if meter_link:
            meter["port"] = meter_link
        if meter_serial:
            meter["serial"] = meter_serial
        request = {"cmd": "provision", "device_id": device_id, "community": community,
                   "wifi": {"ssid": wifi_ssid, "password": wifi_password}, "broker": broker_cfg,
                   "mqtt": {"username": device_id, "password": password}, "meter": meter}
        if interval_s is not None:
            request["interval_s"] = interval_s
        reply = console.request(request)
        try:
            pub = load_public_key(reply.get("pubkey", ""))
            again = load_public_key(console.request({"cmd": "pubkey"}).get("pubkey", ""))
        except ValueError as e:
            raise ProvisionError(f"the device's public key is unusable: {e}") from None
        if pub != again:
            raise ProvisionError("the device reported two different public keys; try again")
        if known is not None and bytes.fromhex(known["pubkey"]) != pub:
            raise ProvisionError(f"device {device_id} is registered with another key "
                                 f"({key_fingerprint(bytes.fromhex(known['pubkey']))}); this device has "
                                 f"{key_fingerprint(pub)}. Revoke the old registration or use a new id")
        # the credential goes live before the device restarts into its new configuration
        broker_mod.add_credential(broker_dir, device_id)
        reloaded = broker_mod.reload(broker_dir)
        console.request({"cmd": "reboot"})
        serial = meter_serial or _meter_serial_from_device(console, timeout)
        if not serial:
            raise ProvisionError("the device could not read the meter's serial number; "
                                 "connect the meter, or give --meter-serial")
    finally:
        console.close()

    if known is None:
        store.add_device(conn, device_id, pub, serial, account=account)
        registered = "registered"
    else:
        registered = "already registered (same key)"
        if serial != known["meter_serial"]:
            raise ProvisionError(f"device {device_id} is registered with meter {known['meter_serial']}, "
                                 f"the device reports {serial}: use `egs-gw device replace-meter`")
    return {
        "id": device_id, "community": community, "meter_serial": serial,
        "pubkey": pub.hex(), "fingerprint": key_fingerprint(pub), "key": reply.get("key"),
        "firmware": hello.get("fw"), "platform": hello.get("platform"), "registration": registered,
        "account": account, "credential_file": str(broker_mod.credential_path(broker_dir, device_id)),
        "broker_reloaded": reloaded,
    }


def _meter_serial_from_device(console, timeout):
    """After the reboot the device reads the meter; its status carries the serial."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st = console.request({"cmd": "status"}, timeout=max(1.0, deadline - time.monotonic()))
        except ProvisionError as e:
            last = e
            time.sleep(0.3)
            continue
        serial = st.get("meter_serial")
        if isinstance(serial, str) and serial:
            return serial
        time.sleep(0.3)
    if last is not None and not isinstance(last, ProvisionError):
        raise last
    return None
