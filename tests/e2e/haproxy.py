"""Debian's HAProxy running deploy/haproxy/haproxy.cfg as is, for the proxy topology tests."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import grp
import ipaddress
import os
import pwd
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, free_port

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "nodes"
STOP_S = 10.0


def haproxy_missing() -> str | None:
    """Why the proxy tests cannot run here, or None when they can."""
    if os.access(HAPROXY, os.X_OK):
        return None
    return (
        "haproxy is not installed: `make test` installs Debian's (apt-get install haproxy),"
        " which needs root on Debian"
    )


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 and its key in one PEM file (what HAProxy's `crt` reads), and
    a client context that trusts exactly that certificate, as a browser would trust the site's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "textbook-chat test proxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / "chat.pem"
    path.write_bytes(cert_pem + key_pem)
    return path, ssl.create_default_context(cadata=cert_pem.decode())


class HAProxy:
    """A running HAProxy: where readers connect, and its runtime API."""

    def __init__(
        self, proc: asyncio.subprocess.Process, port: int, admin: Path, client_ssl: ssl.SSLContext
    ) -> None:
        self.proc = proc
        self.port = port
        self.admin = admin
        self.client_ssl = client_ssl

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/v1/chat"

    async def command(self, line: str) -> str:
        """One runtime API command (`show stat`, …) and its whole answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.admin))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def server_states(self) -> dict[str, str]:
        """Each node's state as the health checks see it: UP, DOWN, or a transition (UP 1/2)."""
        text = (await self.command("show stat")).lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(text.splitlines())
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def wait_state(self, server: str, state: str, *, within: float = 30.0) -> None:
        """Wait until `server` is in `state`; TimeoutError naming every node's state if not."""
        deadline = time.monotonic() + within
        while True:
            states = await self.server_states()
            if states.get(server) == state:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server} not {state} within {within} s: {states}")
            await asyncio.sleep(0.1)


def _run_as() -> dict[str, str]:
    """As root HAProxy drops to its Debian user, as deployed; anyone else stays who they are."""
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            pwd.getpwnam("haproxy")
            grp.getgrnam("haproxy")
            return {}
    return {
        "CHAT_PROXY_USER": pwd.getpwuid(os.geteuid()).pw_name,
        "CHAT_PROXY_GROUP": grp.getgrgid(os.getegid()).gr_name,
    }


@asynccontextmanager
async def run_haproxy(node_ports: Sequence[int], log: Path) -> AsyncIterator[HAProxy]:
    """deploy/haproxy/haproxy.cfg, unchanged, in front of the nodes on these loopback ports; yields
    once every node is UP. Only the environment the config reads differs from a deployment."""
    assert len(node_ports) == 3, "the config names three nodes"
    # a unix socket path has a 108-byte limit, which a pytest tmp_path can pass
    with tempfile.TemporaryDirectory(prefix="tc-haproxy-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # HAProxy may have dropped to its own user
        cert, client_ssl = self_signed(workdir)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CHAT_BIND": f"127.0.0.1:{port}",
            "CHAT_CERT": str(cert),
            "CHAT_ADMIN_SOCKET": str(workdir / "admin.sock"),
            **{f"CHAT_NODE{i}": f"127.0.0.1:{p}" for i, p in enumerate(node_ports, 1)},
            **_run_as(),
        }
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                HAPROXY, "-db", "-f", str(CONFIG), env=env, stdout=out, stderr=out
            )
        proxy = HAProxy(proc, port, workdir / "admin.sock", client_ssl)
        try:
            await _wait_started(proxy, log)
            for name in ("node1", "node2", "node3"):
                await proxy.wait_state(name, "UP")
            yield proxy
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), STOP_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_started(proxy: HAProxy, log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proxy.proc.returncode is not None:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"haproxy exited with {proxy.proc.returncode}:\n{text[-3000:]}")
        with contextlib.suppress(OSError):
            await proxy.server_states()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"haproxy's runtime API did not answer within {within} s")
