"""Serving an ASGI app over real sockets: ``serve_in_thread`` (uvicorn in a thread)."""

from __future__ import annotations

from typing import Any, Literal


class serve_in_thread:  # lower case: used like a function, `with serve_in_thread(app) as url:`
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread.

    ``with serve_in_thread(api) as base_url: ...`` — the server is up when the block starts
    and stopped when it ends. Real sockets, same process: for tests and the demo. Benchmarks
    that must not share the client's GIL run ``camb-async fake-server`` in a subprocess.

    Args:
        app: the ASGI app (e.g. a ``FakeCambAPI``).
        host: the address to listen on.
        port: the port (0: a free one).
        log_level: uvicorn's log level.
        lifespan: uvicorn's lifespan mode.
        **uvicorn_options: more ``uvicorn.Config`` options.
    """

    port: int

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        lifespan: Literal["on", "off", "auto"] = "off",
        **uvicorn_options: Any,
    ) -> None:
        self.app = app
        self.lifespan = lifespan  # "on" for apps (e.g. FastAPI) that open resources at startup
        self.host = host
        self.port = port
        self.log_level = log_level
        self.options = uvicorn_options
        self._server: Any = None
        self._thread: Any = None

    def __enter__(self) -> str:
        import socket
        import threading
        import time

        import uvicorn

        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
        # when the socket says it is TCP, and accepted sockets inherit proto from this one.
        # With proto 0, every answer after a connection's first stalled ~40 ms (Nagle against
        # the client's delayed ACK: headers and body go out as two writes).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self.log_level,
            lifespan=self.lifespan,
            access_log=False,
            **self.options,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-camb-api"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self._sock = sock
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
