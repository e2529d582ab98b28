"""Certificates for the TLS tests, made with openssl: a CA, a server and a client it signed, a rogue CA and client."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _issue(folder: Path, name: str, ca: str, usage: str) -> None:
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n")
    _openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=folder)  # fmt: skip


def make_certs(folder: Path) -> Path:
    """Into `folder`: ca, rogue-ca (.pem/.key), server, client and admin (signed by ca), rogue-client (by rogue-ca)."""
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *EC, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN={ca}", cwd=folder)  # fmt: skip
    _issue(folder, "server", "ca", "serverAuth")
    _issue(folder, "client", "ca", "clientAuth")
    _issue(folder, "admin", "ca", "clientAuth")  # an operator's: the one on the admin allow-list
    _issue(folder, "rogue-client", "rogue-ca", "clientAuth")
    return folder
