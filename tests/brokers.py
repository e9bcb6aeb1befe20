"""A real mosquitto for tests: plain, or TLS with passwords and per-node ACLs. Each
broker gets a free loopback port and a generated config, and is torn down after."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# Tests run as root with files in root-only temp dirs: keep mosquitto from dropping to
# its own user, which could not read them.
KEEP_USER = "user root\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path
    ca: Path | None = None
    password_file: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        self.proc = _launch(self.conf, self.port)


def _launch(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({proc.returncode}); config {conf}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


# Without it, mosquitto's small writes to a client wait for that client's delayed ACK
# (~40 ms) whenever the client also publishes (Nagle): docs/mqtt.md.
NODELAY = "set_tcp_nodelay true\n"


@contextmanager
def plain_broker(tmp: Path, nodelay: bool = True) -> Iterator[Broker]:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"{NODELAY if nodelay else ''}"
                    f"{KEEP_USER}")
    b = Broker(f"mqtt://127.0.0.1:{port}", port, _launch(conf, port), conf)
    try:
        yield b
    finally:
        b.stop()


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def client_cert(tmp: Path, name: str) -> tuple[Path, Path]:
    """A client certificate signed by the test CA that ``tls_broker`` made in ``tmp``."""
    ca_key = serialization.load_pem_private_key((tmp / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((tmp / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(name, key, ca.subject, ca_key, ca=False)
    (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(_pem_key(key))
    return tmp / f"{name}.pem", tmp / f"{name}.key"


@contextmanager
def tls_broker(tmp: Path, node: str, users: dict[str, str],
               require_certificate: bool = False) -> Iterator[Broker]:
    """TLS (test CA made now), passwords, and ACLs: a board reads only its own profile
    topic and writes only its own tree; a planner writes profiles and reads the rest."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("sortie test CA", ca_key, None, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", srv_key, ca.subject, ca_key, ca=False)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "ca.key").write_bytes(_pem_key(ca_key))
    (tmp / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(_pem_key(srv_key))
    pw = tmp / "passwords"
    pw.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                       capture_output=True)
    acl = tmp / "acl"
    acl.write_text(
        "# boards: their own profiles in, their own tree out\n"
        "pattern read sortie/v1/%u/profiles\n"
        "pattern write sortie/v1/%u/acks\npattern write sortie/v1/%u/status\n"
        "pattern write sortie/v1/%u/telemetry\npattern write sortie/v1/%u/events\n"
        "# planners\nuser planner\ntopic write sortie/v1/+/profiles\n"
        "topic read sortie/v1/#\n")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {pw}\nacl_file {acl}\ncafile {tmp / 'ca.pem'}\n"
        f"certfile {tmp / 'server.pem'}\nkeyfile {tmp / 'server.key'}\n{KEEP_USER}"
        f"{NODELAY}"
        f"{'require_certificate true' + chr(10) if require_certificate else ''}")
    b = Broker(f"mqtts://localhost:{port}", port, _launch(conf, port), conf,
               ca=tmp / "ca.pem", password_file=pw)
    try:
        yield b
    finally:
        b.stop()
