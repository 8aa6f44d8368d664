"""A throwaway CA, server certificate and client certificate for TLS tests (``cryptography``).

The server certificate is valid for ``localhost``, ``127.0.0.1`` and ``::1``, so a test
server on loopback verifies with ordinary hostname checking (``server_names`` makes one
valid for other names only, to test hostname checking). Keys are EC P-256: quick to
make, and accepted by redis-server (OpenSSL), nats-server (Go) and Python's ssl module.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one throwaway PKI: CA, server pair and client pair (keys unencrypted)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_client_cert: bool = True) -> ssl.SSLContext:
        """A client context trusting the CA, presenting the client certificate unless told not."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def encrypted_client_key(self, password: str) -> Path:
        """The client key encrypted with `password`, beside it (for the key-password settings)."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.client_key.read_bytes(), password=None)
        path = self.client_key.with_name("client-key-encrypted.pem")
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password.encode()),
            )
        )
        return path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context with the server pair, optionally requiring a CA-signed client cert."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.server_cert), str(self.server_key))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return context


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""What the server certificate is valid for unless told otherwise."""


def make_tls_files(
    directory: Path, *, days: int = 2, server_names: Sequence[str] = LOOPBACK_NAMES
) -> TlsFiles:
    """Write a new CA, a server certificate and a client certificate into ``directory``.

    The server certificate is valid for ``server_names`` only (IP addresses or DNS names);
    its common name is the first of them, so no other name matches through it either.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    def new_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "abe integration tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    ca_key = new_key()
    ca_name = name("abe test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    def san(server_name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(server_name))
        except ValueError:
            return x509.DNSName(server_name)

    server_key, server_cert = leaf(
        server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, [san(n) for n in server_names]
    )
    client_key, client_cert = leaf("abe-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    return TlsFiles(
        ca_cert=write_cert(directory / "ca.pem", ca_cert),
        server_cert=write_cert(directory / "server.pem", server_cert),
        server_key=write_key(directory / "server-key.pem", server_key),
        client_cert=write_cert(directory / "client.pem", client_cert),
        client_key=write_key(directory / "client-key.pem", client_key),
    )
