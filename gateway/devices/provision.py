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

Re-provisioning a registered device is allowed when it still has the same key. It sends
only what it is given (the device merges it onto its configuration, read first with
status), so a new broker address leaves the meter model, Wi-Fi and TLS as they were. With
TLS the broker's CA goes to the device first (the console's ca command, DER); TLS without
a CA is refused unless --insecure. The label shows the account as stored.
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


CA_CHUNK = 1024          # DER bytes per console line (1,368 in base64; lines end at 2,048)


def load_ca(path, what="--broker-ca"):
    """The DER bytes of the CA certificate in `path`, PEM or DER (the device's mbedTLS
    takes DER only); ProvisionError names the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProvisionError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        raise ProvisionError(f"{what} {path}: not a PEM or DER certificate") from None
    der = cert.public_bytes(Encoding.DER)
    if len(der) > 4096:
        raise ProvisionError(f"{what} {path}: {len(der)} bytes, more than a device keeps (4096)")
    return der


def send_ca(console, der):
    """Install the broker's CA on the device (the console's ca command); its path there."""
    import base64
    import hashlib

    reply = None
    for at in range(0, len(der), CA_CHUNK):
        reply = console.request({"cmd": "ca", "size": len(der), "at": at,
                                 "data": base64.b64encode(der[at:at + CA_CHUNK]).decode()})
    if not reply or reply.get("sha256") != hashlib.sha256(der).hexdigest() or not reply.get("ca"):
        raise ProvisionError("the device did not store the broker's CA intact; try again")
    return reply["ca"]


def _request(device_id, community, password, current, *, broker, default_broker, broker_tls,
             ca_path, insecure, wifi_ssid, wifi_password, meter_model, meter_address, meter_baud,
             meter_serial, meter_link, interval_s):
    """The provision request: the identity and credential, and of the rest only what was
    given (the device merges it onto its configuration). `current` is the device's public
    configuration, or None for a device never provisioned (it gets the default broker)."""
    request = {"cmd": "provision", "device_id": device_id, "community": community,
               "mqtt": {"username": device_id, "password": password}}
    b = {}
    if broker is not None:
        b.update(_broker_addr(broker))
    elif current is None and default_broker:
        b.update(_broker_addr(default_broker))
    if broker_tls is not None:
        b["tls"] = bool(broker_tls)
    if ca_path is not None:
        b["ca"], b["insecure"] = ca_path, False
    elif insecure:
        b["insecure"] = True
    if b:
        request["broker"] = b
    wifi = {k: v for k, v in (("ssid", wifi_ssid), ("password", wifi_password)) if v is not None}
    if wifi:
        request["wifi"] = wifi
    meter = {k: v for k, v in (("model", meter_model), ("unit", meter_address), ("baud", meter_baud),
                               ("port", meter_link)) if v is not None}
    if meter_serial:
        meter["serial"] = meter_serial
    if meter:
        request["meter"] = meter
    if interval_s is not None:
        request["interval_s"] = interval_s
    return request


def provision(conn, port, device_id, *, community, broker=None, broker_dir, wifi_ssid=None,
              wifi_password=None, meter_model=None, meter_address=None, meter_baud=None,
              meter_serial=None, meter_link=None, interval_s=None, account=None, broker_tls=None,
              broker_ca=None, insecure=False, default_broker=None, default_ca=None, baud=115200,
              timeout=30.0):
    """Provision and register one device; returns its label (a dict).

    Options left at None are not sent: a device provisioned before keeps its setting
    (model, Wi-Fi, TLS, ...); a new one gets the firmware's default, and `default_broker`.
    With TLS the device must get the broker's CA: `broker_ca` (PEM or DER file), else
    `default_ca` when the device has none yet; without either only `insecure` allows it.
    """
    from protocol import topics
    from protocol.ocmf import key_fingerprint, load_public_key

    topics.check_id(device_id, "--id")
    topics.check_id(community, "--community")
    if account is not None:
        from gateway.accounts import normalize_address
        account = normalize_address(account)
    if broker is not None:
        _broker_addr(broker)
    if broker_ca is not None and insecure:
        raise ProvisionError("--broker-ca and --insecure contradict each other: give one")
    ca_der = load_ca(broker_ca) if broker_ca is not None else None
    default_der = load_ca(default_ca, "the configured broker CA") if default_ca and not insecure else None
    if broker_tls and ca_der is None and default_der is None and not insecure:
        raise ProvisionError("--broker-tls needs the broker's CA: give --broker-ca FILE (or set "
                             "broker.cafile), or --insecure to connect without verifying the broker")
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
        current = None
        if hello.get("provisioned"):
            current = console.request({"cmd": "status"}).get("config") or {}
        now = (current or {}).get("broker") or {}
        tls = bool(now.get("tls")) if broker_tls is None else bool(broker_tls)
        if ca_der is None and tls and not now.get("ca") and not insecure:
            if default_der is None:
                raise ProvisionError(f"device {device_id} uses TLS without the broker's CA: give "
                                     "--broker-ca FILE (or set broker.cafile), or --insecure")
            ca_der = default_der
        password = broker_mod.credential(broker_dir, device_id)
        ca_path = send_ca(console, ca_der) if ca_der is not None else None
        request = _request(device_id, community, password, current, broker=broker,
                           default_broker=default_broker, broker_tls=broker_tls, ca_path=ca_path,
                           insecure=insecure, wifi_ssid=wifi_ssid, wifi_password=wifi_password,
                           meter_model=meter_model, meter_address=meter_address,
                           meter_baud=meter_baud, meter_serial=meter_serial, meter_link=meter_link,
                           interval_s=interval_s)
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
        stored = store.add_device(conn, device_id, pub, serial, account=account)
        registered = "registered"
    else:
        registered = "already registered (same key)"
        if serial != known["meter_serial"]:
            raise ProvisionError(f"device {device_id} is registered with meter {known['meter_serial']}, "
                                 f"the device reports {serial}: use `egs-gw device replace-meter`")
        stored = store.set_account(conn, device_id, account) if account is not None else known
    return {
        "id": device_id, "community": community, "meter_serial": serial,
        "pubkey": pub.hex(), "fingerprint": key_fingerprint(pub), "key": reply.get("key"),
        "firmware": hello.get("fw"), "platform": hello.get("platform"), "registration": registered,
        "account": stored["account"], "credential_file": str(broker_mod.credential_path(broker_dir, device_id)),
        "broker_reloaded": reloaded, "broker_ca": ca_path,
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
