"""Test certificates made with `cryptography`: a CA, and server certificates it signs.

Shared by the firmware and gateway tests of the device's TLS link: a broker certificate
from the community's CA, and one from another CA (what a fake broker would present).
"""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder):
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=30))


class CA:
    """A certificate authority; `der` and `pem` are its certificate."""

    def __init__(self, name="EGS test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (_validity(x509.CertificateBuilder()).subject_name(_name(name))
                     .issuer_name(_name(name)).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(
                         digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.der = self.cert.public_bytes(serialization.Encoding.DER)
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def server(self, directory, hosts=("localhost",), ips=("127.0.0.1",), stem="server"):
        """(certfile, keyfile) in `directory` for a server with these SAN names."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (_validity(x509.CertificateBuilder()).subject_name(_name(hosts[0] if hosts else "broker"))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(self.key, hashes.SHA256()))
        certfile, keyfile = directory / f"{stem}.crt", directory / f"{stem}.key"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        keyfile.chmod(0o600)
        return certfile, keyfile
