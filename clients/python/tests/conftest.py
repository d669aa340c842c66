"""A real `cairn serve` on 127.0.0.1 for each test: a fresh database, an admin token made with
`cairn token create`, a free port; killed after the test. The binary is `$CAIRN_BIN`, else the
repository's `target/debug/cairn`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
USER = "admin@veritas.com"
#: Short, so that a killed worker's lease runs out within the test's bounds.
WORKER_LEASE_MS = 2000


def cairn_bin() -> str:
    path = os.environ.get("CAIRN_BIN") or str(REPO / "target" / "debug" / "cairn")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no cairn binary at {path}: build it (cargo build -p cairn-cli) or set CAIRN_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `cairn serve` process on a database of its own; `kill()` and `start()` again keep the
    database and the port."""

    def __init__(self, workdir: Path) -> None:
        self.bin = cairn_bin()
        self.workdir = workdir
        self.db = workdir / "cairn.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        out = subprocess.run(
            [self.bin, "token", "create", "--user", USER, "--role", "admin", "--db", str(self.db)],
            cwd=workdir,
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.token = out.stdout.decode().strip().splitlines()[-1]

    def make_token(self, user: str, role: str) -> str:
        out = subprocess.run(
            [self.bin, "token", "create", "--user", user, "--role", role, "--db", str(self.db)],
            cwd=self.workdir,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return out.stdout.decode().strip().splitlines()[-1]

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.workdir / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [
                self.bin,
                "serve",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--db",
                str(self.db),
                "--worker-lease-ms",
                str(WORKER_LEASE_MS),
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cairn serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cairn serve did not answer /healthz within 30 s: {self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def log(self) -> str:
        parts: List[str] = []
        for i in range(1, self.starts + 1):
            p = self.workdir / f"server-{i}.log"
            if p.exists():
                parts.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.kill()
        if s.log().count("panicked"):
            pytest.fail(f"cairn serve panicked:\n{s.log()}")
