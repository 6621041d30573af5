"""Network endpoints that misbehave, on localhost: only the network is faked, the client code under test is real."""
from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest


def _serve(answer_health: bool) -> Iterator[int]:
    """A port that accepts connections and never says a word; with `answer_health`, it answers an HTTP GET of a
    path ending in /health (a Prefect API's liveness question) and stalls on every other request."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def talk(conn: socket.socket) -> None:
        data = b""
        conn.settimeout(0.2)
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                continue
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:
                head, data = data.split(b"\r\n\r\n", 1)
                parts = head.split(b" ")
                if len(parts) > 1 and parts[1].split(b"?")[0].endswith(b"/health"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\ntrue")
                else:
                    data = b""  # stall: read on, answer never

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            held.append(conn)
            if answer_health:
                threading.Thread(target=talk, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    yield from _serve(answer_health=False)


@pytest.fixture
def health_only_port() -> Iterator[int]:
    """A Prefect API that answers /health and then stalls on every real request (a server that hung mid-run)."""
    yield from _serve(answer_health=True)
