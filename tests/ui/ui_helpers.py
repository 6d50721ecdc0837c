"""A `launch ui` server in this process on a free port, over a root folder of the test's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from launcher.ui.server import make_server


@contextmanager
def ui_server(root: Path, token: str | None = None) -> Iterator[str]:
    """The base URL of a running server; shut down on exit."""
    server = make_server(root, "127.0.0.1", 0, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
