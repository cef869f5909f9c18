"""``FakeServer``: a ``FakeCambAPI`` on uvicorn in a child process, for tests and benchmarks.

The client under test (or measured) never shares a GIL or an event loop with the server. Two
ways to start one, the same object afterwards (``url``, ``stop()``, a context manager):

* ``FakeServer(tasks=[...], rate_limit=..., fault_rate=..., audio=[...])``: this file run as
  a script on a JSON spec (``add_task``/``set_audio`` keyword arguments). ``GET /_bench/log``
  returns every request served (arrival on the server's ``time.monotonic``, status, path,
  fault label), so benchmarks measure what the server saw.
* ``FakeServer.cli(directory, api_key, *args)``: the ``camb-async fake-server`` command itself, as a
  user runs it (tests/tcp/test_cli.py); ``ids`` are the ``(kind, id)`` pairs it scripted.

Both children print ``listening on http://...`` to stderr once their socket is bound; that line
(in ``<directory>/server.log``) is what the parent waits for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CAMB_ASYNC = Path(sys.executable).parent / "camb-async"


class FakeServer:
    """``with FakeServer(tasks=[...]) as url:`` — FakeCambAPI on uvicorn in a child process."""

    def __init__(
        self,
        tasks: Sequence[dict[str, Any]] = (),
        *,
        api_key: str = "bench-key",
        rate_limit: float | None = None,
        fault_rate: float = 0.0,
        seed: int = 0,
        audio: Sequence[dict[str, Any]] = (),
        directory: Path | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="camb-fake-")) if directory is None else directory
        self.log_file = self.dir / "server.log"
        self.ids_file = self.dir / "ids.txt"
        if argv is None:
            spec = {
                "tasks": list(tasks),
                "api_key": api_key,
                "rate_limit": rate_limit,
                "fault_rate": fault_rate,
                "seed": seed,
                "audio": list(audio),
            }
            spec_path = self.dir / "spec.json"
            spec_path.write_text(json.dumps(spec))
            argv = [sys.executable, __file__, str(spec_path)]
        self.argv = list(argv)
        self.url = ""
        self.ids: list[tuple[str, ...]] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def cli(cls, directory: Path, api_key: str, *args: str) -> FakeServer:
        """``camb-async fake-server --port 0 --ids-file DIR/ids.txt ARGS``, started."""
        server = cls(
            directory=directory,
            argv=[
                str(CAMB_ASYNC),
                "fake-server",
                "--port",
                "0",
                "--api-key",
                api_key,
                "--ids-file",
                str(directory / "ids.txt"),
                *args,
            ],
        )
        server.start()
        return server

    def start(self, timeout: float = 30.0) -> str:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
        with self.log_file.open("w") as err:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=environ,
            )
        deadline = time.monotonic() + timeout
        while not (match := re.search(r"listening on (http://\S+)", self.log_file.read_text())):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake server did not start: {self.log_file.read_text()}")
            time.sleep(0.05)
        self.url = match.group(1)
        if self.ids_file.exists():
            self.ids = [tuple(line.split()) for line in self.ids_file.read_text().splitlines()]
        return self.url

    def log(self) -> list[tuple[float, int, str, str | None]]:
        """Every request served so far (spec servers only): (arrival on the server's
        ``time.monotonic``, which is system-wide, status, path, fault label or None)."""
        with urllib.request.urlopen(f"{self.url}/_bench/log") as r:
            return [(t, s, p, f) for t, s, p, f in json.loads(r.read())]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve(spec_path: str) -> None:  # the child of FakeServer(tasks=...)
    import uvicorn

    from camb_async.testing import FakeCambAPI

    spec = json.loads(Path(spec_path).read_text())
    api = FakeCambAPI(
        api_key=spec["api_key"],
        rate_limit=spec["rate_limit"],
        fault_rate=spec["fault_rate"],
        seed=spec["seed"],
        clock=time.monotonic,
    )
    for task in spec["tasks"]:
        api.add_task(**task)
    for audio in spec["audio"]:
        api.set_audio(**audio)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/log":
            body = json.dumps([(r.time, r.status, r.path, r.fault) for r in api.log]).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await api(scope, receive, send)

    # IPPROTO_TCP: accepted sockets inherit it, so asyncio sets TCP_NODELAY on them (see
    # camb_async.testing.serve_in_thread).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections queue until uvicorn accepts them
    sys.stderr.write(f"listening on http://127.0.0.1:{sock.getsockname()[1]}\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    _serve(sys.argv[1])
