"""Whether a port can be listened on (the one probe the rendezvous and `launch serve` checks share), and whether
a host is this machine alone (`launch serve` warns, `launch ui` refuses without a token)."""

from __future__ import annotations

import ipaddress
import socket


def port_taken(port: int, host: str = "") -> str | None:
    """Why `port` on `host` cannot be listened on now (the OS's reason), or None when it can. SO_REUSEADDR, as
    the rendezvous store and uvicorn use: a TIME_WAIT left by a finished run does not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as err:
            return err.strerror or str(err)
    return None


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
