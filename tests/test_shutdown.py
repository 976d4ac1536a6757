"""Graceful shutdown's socket steps (serving/platform/shutdown.py) on plain loopback sockets, and the order of events
on a real `bentoml serve` under SIGTERM."""
from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import pytest

from serving.platform.shutdown import (
    accept_queue_length,
    allow_new_connections,
    drop_new_connections,
    wait_for_empty_queue,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options")


def _connect(port: int, timeout: float) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _listener(backlog: int) -> tuple[socket.socket, int]:
    """A listening loopback socket on a free port, and the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener, listener.getsockname()[1]


def test_the_filter_stops_new_handshakes_but_keeps_queued_connections():
    listener, port = _listener(16)
    queued = _connect(port, 2)
    time.sleep(0.05)
    assert accept_queue_length(listener) == 1
    drop_new_connections(listener)
    with pytest.raises((TimeoutError, socket.timeout)):
        _connect(port, 0.5)  # its SYN is dropped: no handshake, no reset
    conn, _ = listener.accept()  # the one that was queued is still there
    queued.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    assert accept_queue_length(listener) == 0
    listener.shutdown(socket.SHUT_RD)  # stops listening for every holder of the socket
    with pytest.raises(ConnectionRefusedError):
        _connect(port, 2)
    for s in (queued, conn, listener):
        s.close()


def test_a_replaced_workers_drain_leaves_a_socket_the_next_worker_can_serve(monkeypatch):
    # `bentoml serve --reload` replaces the workers and keeps the arbiter's socket: the old worker's drain must
    # not end that socket, and the new worker takes the old one's filter off.
    import asyncio
    import os
    import signal

    from serving.platform import shutdown

    listener, port = _listener(16)  # the arbiter's
    monkeypatch.setattr(shutdown, "listening_socket", lambda: socket.socket(fileno=os.dup(listener.fileno())))
    forwarded = []
    drain = shutdown.GracefulShutdown(delay=0, on_begin=lambda: None)
    drain.previous = {15: lambda sig, frame: forwarded.append(sig)}  # stands in for uvicorn's handler
    asyncio.run(drain._drain(15, None))
    assert forwarded == [15]
    with pytest.raises((TimeoutError, socket.timeout)):
        _connect(port, 0.5)  # the old worker's filter: new connections wait
    drain.install()  # the new worker (it also sets signal handlers: put back below)
    try:
        client = _connect(port, 2)
        conn, _ = listener.accept()
        for s in (client, conn):
            s.close()
    finally:
        for sig, handler in drain.previous.items():
            signal.signal(sig, handler)
    assert allow_new_connections(listener) is False  # nothing left to take off
    listener.close()


def test_the_filter_drops_only_the_packet_that_opens_a_connection():
    # Every packet but a bare SYN passes: the last ACK of a handshake answered before the filter went on must
    # reach the listener, or that client is left connected to nobody (a drop-everything filter did that).
    # An established socket with the filter shows it: its packets all carry ACK.
    listener, port = _listener(4)
    client = _connect(port, 2)
    conn, _ = listener.accept()
    drop_new_connections(conn)
    client.sendall(b"after the filter")
    conn.settimeout(2)
    assert conn.recv(64) == b"after the filter"
    for s in (client, conn, listener):
        s.close()


def test_the_wait_ends_once_the_queue_has_stayed_empty():
    import asyncio

    listener, port = _listener(4)
    queued = _connect(port, 2)
    time.sleep(0.05)
    assert asyncio.run(wait_for_empty_queue(listener, settle=0.05, timeout=0.3)) is False  # nobody accepts
    conn, _ = listener.accept()
    start = time.monotonic()
    assert asyncio.run(wait_for_empty_queue(listener, settle=0.05, timeout=2)) is True
    assert 0.05 <= time.monotonic() - start < 1
    for s in (queued, conn, listener):
        s.close()


def test_sigterm_turns_readyz_503_while_still_answering_then_exits_0(bento_home):
    import signal

    from conftest import Server, cifar_test_images

    # New connections are made for 1.5 s of the 3 s delay: the filter that drops new connections goes on when
    # the delay ends, and an iteration begun just before the deadline on a loaded machine must not meet it.
    srv = Server("serving.service:CIFAR10Classifier", bento_home, {"CIFAR10_SHUTDOWN_DELAY": "3"})
    image = cifar_test_images(1)[0].read_bytes()
    try:
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
        srv.proc.send_signal(signal.SIGTERM)  # the arbiter only, as docker stop and Kubernetes do
        deadline = time.time() + 1.5
        statuses = set()
        while time.time() < deadline:
            statuses.add(httpx.get(f"{srv.url}/readyz").status_code)
            r = httpx.post(f"{srv.url}/classify", files={"image": ("x.jpg", image, "image/jpeg")})
            assert r.status_code == 200  # still answering during the delay
            time.sleep(0.1)
        assert 503 in statuses
        assert srv.proc.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/readyz", timeout=2)
    finally:
        srv.stop()
    assert "draining for 3.0 s" in srv.log.read_text()


def test_requests_in_flight_at_sigterm_are_all_answered(bento_home):
    import signal

    from conftest import Server, cifar_test_images

    srv = Server("serving.service:CIFAR10Classifier", bento_home, {"CIFAR10_SHUTDOWN_DELAY": "0"})
    image = cifar_test_images(1)[0].read_bytes()
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:  # a new connection per request, as hey -disable-keepalive
                with httpx.Client(timeout=30) as c:
                    r = c.post(f"{srv.url}/classify", files={"image": ("x.jpg", image, "image/jpeg")})
                outcomes.append(str(r.status_code))
            except httpx.ConnectError as exc:
                outcomes.append("refused" if "refused" in str(exc).lower() else f"connect: {exc}")
                time.sleep(0.01)
            except httpx.HTTPError as exc:  # reset, read error, timeout: accepted and not answered
                outcomes.append(f"lost: {type(exc).__name__} {exc}")
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        srv.stop()
    lost = [o for o in outcomes if o not in ("200", "refused")]
    assert outcomes.count("200") > 20 and not lost, lost[:5]
