"""Servers the benchmarks start for themselves, each in its own process.

* ``Nginx``: a static nginx on loopback answering every GET with one status JSON from memory.
  For client-overhead figures: the server is never the bottleneck and costs the client
  process nothing, so process CPU time per request is the client's own cost.
* ``FakeServer``: ``camb_async.testing.FakeCambAPI`` on uvicorn in a subprocess, so its work
  never shares the measured client's GIL. One class for the tests and the benchmarks, in
  tests/fake_server.py (re-exported here). ``server.log()`` returns every request it served
  (arrival time on its monotonic clock, status), which is what budget-fidelity figures are
  computed from: what the server saw, not what the client believes it sent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests/
from tests.fake_server import FakeServer

__all__ = ["FakeServer", "Nginx", "free_port", "wait_for_port"]

STATUS_BODY = '{"status":"SUCCESS","run_id":4242,"message":null,"exception_reason":null}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


class Nginx:
    """``with Nginx() as url:`` — nginx on a free loopback port; one worker process."""

    def __init__(self, body: str = STATUS_BODY) -> None:
        self.body = body
        self.binary = find_nginx()
        if self.binary is None:
            raise RuntimeError("nginx not found: apt-get install nginx (nox -s bench does)")
        self.version = (
            subprocess.run([self.binary, "-v"], capture_output=True, text=True)
            .stderr.strip()
            .split("/")[-1]
        )
        self._dir = tempfile.mkdtemp(prefix="camb-bench-nginx-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    def __enter__(self) -> str:
        d = self._dir
        body = self.body.replace("'", "\\'")
        conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
        Path(d, "nginx.conf").write_text(conf)
        self._proc = subprocess.Popen(
            [self.binary, "-p", d, "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, self._proc)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGQUIT)  # graceful: workers exit too
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
