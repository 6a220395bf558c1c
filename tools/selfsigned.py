"""TLS for local use: a throwaway certificate authority, a certificate for 127.0.0.1, ::1 and
localhost signed by it, and a TLS variant of a Serve config that serves https with them (`make cert`).

    python -m tools.selfsigned [--out certs] [--config serve/configs/local.yaml] [--port 8443] [--days 365]

Writes into `--out` (certs/ is git-ignored):

- `ca.crt`: what clients trust. Python (ssl, httpx, requests, fal_client): `SSL_CERT_FILE=certs/ca.crt`;
  curl: `--cacert certs/ca.crt`; Node: `NODE_EXTRA_CA_CERTS=certs/ca.crt`.
- `gateway.crt`, `gateway.key` (mode 0600): the server's certificate and key, for Serve's
  `http_options.ssl_certfile` / `ssl_keyfile` (uvicorn's TLS in Serve's HTTP proxy).
- with `--config`: `<name>-tls.yaml`, that Serve config with `http_options` serving https on
  127.0.0.1:`--port` with the two files above (`make run-tls` serves it).

Why a CA and a server certificate rather than one self-signed certificate: a trust anchor that is a
proper CA (CA:TRUE, keyCertSign) and a leaf with CA:FALSE, serverAuth and the addresses as SANs is
what every TLS client accepts, including Python 3.13's strict default verification. The CA's private
key is never written: it signs this one certificate and is dropped, so nothing else can be issued in
its name. Running this again makes a new CA; clients then read the new `ca.crt`.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")
TLS_PORT = 8443


@dataclass(frozen=True)
class TLSFiles:
    """A server certificate and key, and the CA certificate that clients trust to verify it."""

    certfile: str
    keyfile: str
    cafile: str


def write_certificates(out: Path, names: tuple[str, ...] = LOCAL_NAMES, days: int = 365) -> TLSFiles:
    """A new CA and a server certificate for `names` (IP addresses or DNS names) in `out`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)  # some clock skew
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gigarouter-serve local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "gigarouter-serve local CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(
        certfile=str((out / "gateway.crt").resolve()),
        keyfile=str((out / "gateway.key").resolve()),
        cafile=str((out / "ca.crt").resolve()),
    )
    pem = serialization.Encoding.PEM
    Path(files.cafile).write_bytes(ca.public_bytes(pem))
    Path(files.certfile).write_bytes(leaf.public_bytes(pem))
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(files.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private)
    os.chmod(files.keyfile, 0o600)  # also when the file was there before
    return files


def tls_config(config: dict[str, Any], files: TLSFiles, port: int = TLS_PORT) -> dict[str, Any]:
    """A Serve config file's content, serving https on 127.0.0.1:`port` with `files`."""
    config = copy.deepcopy(config)
    options = config.setdefault("http_options", {}) or {}
    options.update(host="127.0.0.1", port=port, ssl_certfile=files.certfile, ssl_keyfile=files.keyfile)
    config["http_options"] = options
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("certs"))
    parser.add_argument("--config", type=Path, help="also write a TLS variant of this Serve config into --out")
    parser.add_argument("--port", type=int, default=TLS_PORT, help=f"its https port (default {TLS_PORT})")
    parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
    options = parser.parse_args(argv)
    files = write_certificates(options.out, days=options.days)
    print(f"wrote {files.cafile} (clients trust it: SSL_CERT_FILE={files.cafile}), {files.certfile}, {files.keyfile}")
    if options.config is not None:
        variant = tls_config(yaml.safe_load(options.config.read_text()), files, options.port)
        target = options.out / f"{options.config.stem}-tls.yaml"
        header = f"# {options.config} served over https on 127.0.0.1:{options.port}: written by tools/selfsigned.py\n"
        target.write_text(header + yaml.safe_dump(variant, sort_keys=False, allow_unicode=True))
        print(f"wrote {target}: serve run {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
