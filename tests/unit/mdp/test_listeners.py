"""`mdp serve` listens on several sockets sharing one port, so that a burst of new connections
is accepted in one event-loop turn instead of one connection per turn (see mdp.cli)."""

from __future__ import annotations

import os
import select
import socket

import pytest

from mdp.cli import listeners
from tests.support.processes import free_port

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT") or not os.path.isdir("/proc/self/fd"),
    reason="Linux: SO_REUSEPORT spreads connections, /proc lists open files",
)


def test_nothing_connects_before_uvicorn_starts_listening() -> None:
    port = free_port()
    sockets = listeners("127.0.0.1", port, count=4)
    try:
        assert {sock.getsockname()[1] for sock in sockets} == {port}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for sock in sockets:
            sock.close()


def test_the_kernel_spreads_a_burst_of_connections_over_the_listeners() -> None:
    port = free_port()
    sockets = listeners("127.0.0.1", port, count=8)
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for sock in sockets:
            sock.listen(128)
            sock.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(64)]
        per_listener = []
        for sock in sockets:
            count = 0
            # Every connection is established (the handshake is the kernel's): accept them all.
            while select.select([sock], [], [], 0)[0]:
                conn, _ = sock.accept()
                accepted.append(conn)
                count += 1
            per_listener.append(count)
    finally:
        for each in (*clients, *accepted, *sockets):
            each.close()

    assert sum(per_listener) == 64
    # One listener alone would accept all 64 one loop turn at a time.
    assert sum(1 for count in per_listener if count) > 1


def test_a_port_in_use_is_reported_and_nothing_is_left_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError):
            listeners("127.0.0.1", taken.getsockname()[1])
        assert set(os.listdir("/proc/self/fd")) == before


def test_a_port_another_server_listens_on_is_refused_not_shared() -> None:
    port = free_port()
    serving = listeners("127.0.0.1", port, count=2)
    try:
        for sock in serving:
            sock.listen()
        # Without the check, SO_REUSEPORT would admit a second server to the port.
        with pytest.raises(OSError):
            listeners("127.0.0.1", port)
    finally:
        for sock in serving:
            sock.close()
