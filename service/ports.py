"""Is a port free? Asked by the command line before it touches anything, so that a taken port
is one line naming the port and the flag that changes it, not a traceback after the data
folder was created (or, for the demo, emptied) and Ray was started.

The check binds the port the way the server will (``SO_REUSEADDR``, as uvicorn and Ray's
dashboard do), so a port held only by a closed connection in TIME_WAIT counts as free. It
cannot rule out a race with another program binding the port a moment later; the server's own
bind error remains the last word then.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from service.errors import PortInUse

__all__ = ["PortInUse", "check_free", "check_ports"]


def check_free(host: str, port: int, what: str, change: str) -> None:
    """PortInUse unless ``host:port`` can be bound now. ``port`` 0 (any free port) always can.

    ``what`` names the listener ("the gateway"), ``change`` how to pick another port."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise PortInUse(f"port {port} ({where}, {what}) {reason}: {change}") from None


def check_ports(ports: Iterable[tuple[str, int, str, str]]) -> None:
    """:func:`check_free` for each ``(host, port, what, change)``, in order."""
    for host, port, what, change in ports:
        check_free(host, port, what, change)
