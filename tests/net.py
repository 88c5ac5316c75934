"""A free local TCP port for tests that start several processes (a fixed port collides when two test
runs, or a test and a leftover process, share a machine)."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
