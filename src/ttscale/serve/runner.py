"""Running an ASGI app with uvicorn: in the foreground (the CLI) or on a background thread
(tests and `ttscale bench serve`), always with graceful shutdown: requests in flight finish,
new connections are refused."""
from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from ttscale.errors import TTScaleError


class ServerThread:
    """A uvicorn server on a background thread; `url` once started, `stop()` drains it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 graceful_s: float = 30.0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=graceful_s,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name="ttscale-uvicorn",
                                       daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise TTScaleError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in flight finish, then return."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(app: Any, host: str, port: int, graceful_s: float = 30.0,
                  access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting and let requests in flight finish.

    The access log (off by default) holds paths and statuses, never bodies or keys.
    """
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                timeout_graceful_shutdown=graceful_s)
