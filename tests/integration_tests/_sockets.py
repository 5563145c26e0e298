"""Client-side TCP sockets towards a port on this machine, read from /proc/net/tcp.

The table lists every process's sockets; towards a port a test's own server listens on,
they are in practice the test's.

Leak checks count what a test opened: :func:`local_ends` before the test, then
:func:`client_sockets` with ``besides=`` those (a server port may be reused from an
earlier test whose sockets are still closing).
"""

from __future__ import annotations

#: ESTABLISHED (01) and CLOSE_WAIT (08: the server closed, the client did not yet).
_OPEN = ("01", "08")


def local_ends(port: int) -> frozenset[str]:
    """The local ``address:port`` of each open client-side TCP socket towards ``port``.

    Only the remote side is matched, so a server on ``port`` in this process (the
    emulator) does not count.
    """
    wanted = f"{port:04X}"
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[2].rsplit(":", 1)[1] == wanted and fields[3] in _OPEN:
                found.add(fields[1])
    return frozenset(found)


def client_sockets(port: int, *, besides: frozenset[str] = frozenset()) -> int:
    """How many client-side TCP sockets towards ``port`` are open, not counting ``besides``."""
    return len(local_ends(port) - besides)
