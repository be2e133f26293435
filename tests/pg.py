"""A private, throw-away PostgreSQL cluster on loopback for the test suite and the storage benchmark.

``PostgresCluster.start()`` runs ``initdb`` into a fresh temporary directory, picks a free loopback
port, starts the server with ``pg_ctl start -w`` and returns a handle; ``stop()`` shuts it down and
removes the directory. PostgreSQL refuses to run as root, so when we are root the server runs as the
``postgres`` system user (``runuser -u postgres``) in a directory owned by that user.

The binaries are looked up in ``$OPENAMI_PG_BINDIR``, then ``/usr/lib/postgresql/<newest>/bin``
(Debian's layout, installed by ``scripts/ensure-postgres.sh``), then ``PATH``. When none is found,
``PostgresUnavailable`` says exactly what to install: the caller decides to fail (the test suite
does: a CI without PostgreSQL must not pass silently).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bindir"]

_SERVER_USER = "postgres"
_START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the cluster would not start."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; raises PostgresUnavailable."""
    candidates: list[Path] = []
    if env := os.environ.get("OPENAMI_PG_BINDIR"):
        candidates.append(Path(env))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in $OPENAMI_PG_BINDIR, /usr/lib/postgresql/*/bin "
        "or PATH; install them with `bash scripts/ensure-postgres.sh` (Debian package 'postgresql')"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresCluster:
    """A running private cluster; ``url(dbname)`` gives a SQLAlchemy URL (psycopg 3, trust auth)."""

    bindir: Path
    root: Path
    port: int
    _as_user: list[str] = field(default_factory=list, repr=False)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresCluster:
        """initdb + start on a free loopback port. ``durable=False`` turns fsync off (tests only)."""
        bindir = find_bindir()
        as_user: list[str] = []
        root = Path(tempfile.mkdtemp(prefix="openami-pg-"))
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(_SERVER_USER)
            except KeyError as exc:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable(
                    f"running as root but there is no {_SERVER_USER!r} user to run the server"
                ) from exc
            os.chown(root, entry.pw_uid, entry.pw_gid)
            as_user = ["runuser", "-u", _SERVER_USER, "--"]
        cluster = cls(bindir=bindir, root=root, port=0, _as_user=as_user)
        try:
            cluster._initdb()
            cluster._start_on_free_port(durable=durable)
        except BaseException:
            cluster._remove()
            raise
        return cluster

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{_SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user={_SERVER_USER} dbname={dbname}"

    def stop(self) -> None:
        """Fast shutdown and removal of the cluster's directory; safe to call twice."""
        if self.datadir.exists():
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", check=False)
        self._remove()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.root)
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            _SERVER_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _start_on_free_port(self, *, durable: bool) -> None:
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
            # a server sized for bulk ingest rather than the 128 MB / 1 GB defaults: fewer checkpoints
            # (and full-page writes after them) in the middle of a load
            "-c shared_buffers=256MB",
            "-c max_wal_size=4GB",
            "-c checkpoint_timeout=15min",
        ]
        if not durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last_error = ""
        for _ in range(_START_ATTEMPTS):  # the free port may be taken between probe and bind
            self.port = _free_port()
            options = " ".join([f"-p {self.port}", *settings])
            log = str(self.root / "server.log")
            result = self._run(
                "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", log, "-o", options, check=False
            )
            if result.returncode == 0:
                return
            with contextlib.suppress(OSError):
                last_error = (self.root / "server.log").read_text()[-2000:]
        raise PostgresUnavailable(f"PostgreSQL would not start: {last_error.strip()}")

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
