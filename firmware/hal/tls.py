"""The device's TLS client: the broker must prove who it is before the device says a word.

Shared by both HALs (MicroPython's `ssl` is the same mbedTLS wrapper on the unix and
ESP32 ports). The CA is a DER file on the device (mbedTLS there takes DER `cadata`, not
PEM); the broker's certificate must chain to it AND name `host` (DNS or IP SAN), checked
during the handshake, before the MQTT password is sent. MicroPython's SSLContext starts
with CERT_NONE, so the mode is always set explicitly; without a CA the link is refused
unless the configuration says `broker.insecure`. Every failure is an OSError, which the
MQTT client turns into a reconnect with backoff (mbedTLS reports a bad certificate as
ValueError, which would otherwise end the main loop).
"""
import ssl

EPERM = 1


def wrap(sock, host, ca, insecure=False):
    """`sock` wrapped in TLS to `host`, verified against the CA file `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca:
            with open(ca, "rb") as f:
                ctx.load_verify_locations(cadata=f.read())
            ctx.verify_mode = ssl.CERT_REQUIRED
        elif insecure:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            raise OSError(EPERM, "TLS without broker.ca: refusing an unverified broker")
        return ctx.wrap_socket(sock, server_hostname=host)
    except ValueError as e:
        raise OSError(EPERM, "TLS: %s" % (str(e).strip() or "certificate refused"))
