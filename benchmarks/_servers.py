"""Servers the benchmarks start for themselves, each in its own process.

* ``Nginx``: a static nginx on loopback answering every GET with one status JSON from memory.
  For client-overhead figures: the server is never the bottleneck and costs the client
  process nothing, so process CPU time per request is the client's own cost.
* ``FakeServer``: ``camb_async.testing.FakeCambAPI`` on uvicorn in a subprocess (this file run
  as a script), so its work never shares the measured client's GIL. ``GET /_bench/log``
  returns every request it served (arrival time on its monotonic clock, status), which is
  what budget-fidelity figures are computed from: what the server saw, not what the client
  believes it sent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

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
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


class Nginx:
    """``with Nginx() as url:`` — nginx on a free loopback port; one worker process."""

    def __init__(self, body: str = STATUS_BODY) -> None:
        self.body = body
        self.binary = find_nginx()
        if self.binary is None:
            raise RuntimeError("nginx not found: apt-get install nginx (nox -s bench does)")
        self.version = subprocess.run([self.binary, "-v"], capture_output=True, text=True
                                      ).stderr.strip().split("/")[-1]
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
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


class FakeServer:
    """``with FakeServer(tasks=[...], rate_limit=None) as url:`` — FakeCambAPI on uvicorn.

    ``tasks``: dicts of ``FakeCambAPI.add_task`` keyword arguments (``kind`` and ``task_id``
    included); ``after`` counts from the first request the server answers. ``fault_rate``:
    share of requests answered with one of ``testing.TRANSIENT_FAULTS`` (seeded). ``audio``:
    dicts of ``FakeCambAPI.set_audio`` keyword arguments (raw TTS bodies).
    """

    def __init__(self, tasks: list[dict[str, Any]], *, api_key: str = "bench-key",
                 rate_limit: float | None = None, fault_rate: float = 0.0,
                 seed: int = 0, audio: list[dict[str, Any]] | None = None) -> None:
        self.port = free_port()
        self.spec = {"tasks": tasks, "api_key": api_key, "rate_limit": rate_limit,
                     "fault_rate": fault_rate, "seed": seed, "port": self.port,
                     "audio": audio or []}
        self._proc: subprocess.Popen[bytes] | None = None
        fd, self._spec_path = tempfile.mkstemp(suffix=".json", prefix="camb-bench-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.spec, f)

    def __enter__(self) -> str:
        self._proc = subprocess.Popen([sys.executable, __file__, self._spec_path])
        wait_for_port(self.port, self._proc)
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> list[tuple[float, int, str, str | None]]:
        """Every request served so far: (arrival on the server's monotonic clock, status,
        path, fault label or None). ``time.monotonic`` is system-wide, so the client can
        compare its own."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_bench/log") as r:
            return [(t, s, p, f) for t, s, p, f in json.loads(r.read())]

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        os.unlink(self._spec_path)


def _serve(spec_path: str) -> None:  # the FakeServer subprocess
    import uvicorn

    from camb_async.testing import FakeCambAPI

    spec = json.loads(Path(spec_path).read_text())
    api = FakeCambAPI(api_key=spec["api_key"], rate_limit=spec["rate_limit"],
                      fault_rate=spec["fault_rate"], seed=spec["seed"], clock=time.monotonic)
    for task in spec["tasks"]:
        api.add_task(**task)
    for audio in spec.get("audio", []):  # FakeCambAPI.set_audio keyword arguments
        api.set_audio(**audio)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/log":
            body = json.dumps([(r.time, r.status, r.path, r.fault) for r in api.log]).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await api(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=spec["port"], log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    _serve(sys.argv[1])
