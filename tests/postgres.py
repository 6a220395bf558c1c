"""A throwaway PostgreSQL server for tests: its own data directory, a free port on 127.0.0.1.

    server = PostgresServer.create()          # initdb in a temp dir (~1 s)
    server.start()                            # `postgres` in the foreground of a child process
    url = server.create_database("t1")        # postgresql+asyncpg://postgres@127.0.0.1:PORT/t1
    server.stop(); server.start()             # same data, same port: a real outage and return
    server.destroy()                          # stop it and remove its directory

The binaries are Debian's (`postgresql` package, installed by `make test`'s setup when missing):
the newest `/usr/lib/postgresql/*/bin`, or `$PG_BIN`, or whatever `initdb` is on PATH. PostgreSQL
refuses to run as root, so under root (CI) the server runs as the `postgres` user the Debian
package creates (else `nobody`), and its directory is given to that user. It listens on TCP only
(no Unix socket), trusts local connections, and skips fsync: test data only. Only the processes it
started are stopped: the postmaster it holds as a child, by its pid.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.launcher import free_port

START_TIMEOUT_S = 30.0
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """The server could not be installed, initialised or started (the message says what to do)."""


def bin_dir() -> Path:
    """Where initdb and postgres are."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).resolve().parent) if on_path else "")
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (looked in $PG_BIN, /usr/lib/postgresql/*/bin and PATH):"
        " run `make postgres` (Debian: apt-get install postgresql) or set PG_BIN"
    )


def run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


@dataclass
class PostgresServer:
    root: Path
    port: int
    bin: Path
    user: pwd.struct_passwd | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @classmethod
    def create(cls, port: int | None = None) -> PostgresServer:
        """A new, initialised (not started) server in a fresh temp directory."""
        binaries, user = bin_dir(), run_as()
        # Under /tmp when the server runs as another user: $TMPDIR may be inside a directory it cannot enter.
        root = Path(tempfile.mkdtemp(prefix="gigarouter-pg-", dir="/tmp" if user is not None else None))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(root=root, port=port or free_port(), bin=binaries, user=user)
        atexit.register(server.destroy)  # a test run that dies still leaves no server behind
        command = [str(binaries / "initdb"), "-D", str(server.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        result = subprocess.run(
            [*command, "--no-sync", "--locale=C"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            **server._as_user(),
        )
        if result.returncode != 0:
            server.destroy()
            raise PostgresUnavailable(f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return server

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C"}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [], "env": env, "cwd": self.root}

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        settings = [arg for name, value in SETTINGS.items() for arg in ("-c", f"{name}={value}")]
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), *settings]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as_user()
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited with {self.process.returncode}: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise PostgresUnavailable(f"postgres did not accept connections within {timeout_s:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        check = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-t", "1"]
        return subprocess.run(check, check=False, capture_output=True, timeout=10).returncode == 0

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (fast shutdown: open connections are closed); kill it if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its asyncpg URL."""
        import asyncpg

        async def create() -> None:
            connection = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", database="postgres")
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())
        return self.url(name)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip() or "(empty log)"
        except OSError:
            return "(no log)"
