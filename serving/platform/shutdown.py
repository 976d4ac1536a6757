"""Graceful shutdown: on SIGTERM or SIGINT, /readyz turns 503, the service keeps answering for
CIFAR10_SHUTDOWN_DELAY seconds (so a load balancer stops sending), then stops taking connections without
dropping one it already took, answers everything in flight, and exits.

Why this is needed: `bentoml serve` (circus) opens the listening socket in its arbiter process and passes it
to the workers. When a worker's uvicorn stops on SIGTERM it closes only its own copy: the kernel keeps
completing TCP handshakes into the socket's accept queue, nobody accepts them, and when the arbiter exits the
kernel resets every one of them ("connection reset by peer" for requests the clients saw accepted). Neither
BentoML nor uvicorn has a setting for this. So, in the worker, after the delay:

1. a socket filter (classic BPF: drop a SYN without ACK, the packet that opens a connection) is attached to the
   listening socket: new handshakes stop (the clients' SYNs go unanswered), while connections already queued
   stay and handshakes already answered still complete (their last ACK passes; a filter that dropped every
   packet left such a client connected to nobody, reset when the listener closed);
2. uvicorn keeps accepting until the accept queue has stayed empty for a moment (TCP_INFO's tcpi_unacked of a
   listening socket), so late handshakes are taken and the last accepted connections have read their request
   (uvicorn closes a connection whose request it has not read yet when it shuts down);
3. uvicorn is told to exit (its own SIGTERM handler): it stops accepting and waits for open requests, each
   bounded by the service's 30 s request timeout.

The filter stays on the socket after the worker exits: until the arbiter exits and the kernel closes the socket
(then connection attempts are refused), a client's SYN goes unanswered and is retried. The listener is not shut
down: the arbiter's socket outlives this worker when the worker is only being replaced (`bentoml serve --reload`),
and a shut-down listening socket cannot listen again (its port is gone). For the same reason every worker takes
an earlier worker's filter off the socket when it starts (`allow_new_connections`).

Linux only for 1 and 2 (elsewhere: the delay, then uvicorn's own shutdown).
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Optional

log = logging.getLogger("bentoml.cifar10_service")
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
TCP_INFO_UNACKED_OFFSET = 24  # struct tcp_info: 8 one-byte fields, then tcpi_rto, ato, snd_mss, rcv_mss, unacked
QUEUE_SETTLE_S = 0.1  # how long the accept queue must stay empty: a handshake's round trip, a request's first read


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def drop_new_connections(sock: socket.socket) -> None:
    """Attach a filter to a listening socket that drops SYNs without ACK (new connections); every other packet,
    the last ACK of a handshake already answered included, passes. A TCP socket filter sees the packet from the
    TCP header on, whose byte 13 holds the flags (SYN 0x02, ACK 0x10)."""
    program = (_SockFilter * 5)(
        _SockFilter(0x30, 0, 0, 13),          # ldb [13]: the TCP flags
        _SockFilter(0x54, 0, 0, 0x12),        # and #(SYN | ACK)
        _SockFilter(0x15, 0, 1, 0x02),        # jeq #SYN: a SYN alone -> next (drop), else -> skip one (keep)
        _SockFilter(0x06, 0, 0, 0),           # ret #0: drop
        _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep the whole packet
    )
    fprog = _SockFprog(len(program), ctypes.cast(program, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))  # the kernel copies the program here


def allow_new_connections(sock: socket.socket) -> bool:
    """Take a filter off a listening socket (one a replaced worker left on the socket it shares with the next
    one); False when there was none."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:  # ENOENT: no filter attached
        return False
    return True


def accept_queue_length(sock: socket.socket) -> int:
    """Connections a listening socket has completed but nobody has accepted yet (Linux)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, TCP_INFO_UNACKED_OFFSET)[0]


def listening_socket() -> Optional[socket.socket]:
    """This worker's listening socket (a duplicate of the fd BentoML's arbiter passed with --fd)."""
    fds = []
    if "--fd" in sys.argv:
        try:
            fds.append(int(sys.argv[sys.argv.index("--fd") + 1]))
        except (IndexError, ValueError):
            pass
    fds += range(3, 64)
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return sock
        except OSError:
            pass
        sock.close()
    return None


async def wait_for_empty_queue(sock: socket.socket, settle: float, timeout: float) -> bool:
    """Wait until the accept queue has been empty for `settle` seconds (the event loop accepts meanwhile)."""
    deadline = time.monotonic() + timeout
    empty_since: Optional[float] = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if accept_queue_length(sock):
            empty_since = None
        elif empty_since is None:
            empty_since = now
        elif now - empty_since >= settle:
            return True
        await asyncio.sleep(0.005)
    return False


class GracefulShutdown:
    """Installed in each worker: wraps uvicorn's SIGTERM/SIGINT handlers with the drain described above."""

    def __init__(self, delay: float, on_begin: Callable[[], None]):
        self.delay = delay
        self.on_begin = on_begin  # e.g. the service marking itself not ready
        self.started = False
        self.previous: dict[int, Any] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def install(self) -> bool:
        sock = listening_socket() if sys.platform.startswith("linux") else None
        if sock is not None:
            if allow_new_connections(sock):
                log.info("took a replaced worker's connection filter off the listening socket")
            sock.close()
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave uvicorn's handlers alone
            log.warning("graceful shutdown drain not installed (not in the main thread)")
            return False
        return True

    def _handle(self, sig: int, frame: Any) -> None:
        if self.started:
            # A worker often gets SIGTERM twice (from the arbiter stopping it, and from a kill of the whole process
            # group): the drain goes on. A second SIGINT (Ctrl-C again) is the way to force the exit, as in uvicorn.
            if sig == signal.SIGINT:
                self._forward(sig, frame)
            return
        self.started = True
        self.on_begin()
        log.info("%s received: /readyz is 503; draining for %.1f s, then stopping new connections",
                 signal.Signals(sig).name, self.delay)
        if self.loop is None or self.loop.is_closed():
            self._forward(sig, frame)
            return
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain(sig, frame)))

    def _forward(self, sig: int, frame: Any) -> None:
        handler = self.previous.get(sig)
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def _drain(self, sig: int, frame: Any) -> None:
        await asyncio.sleep(self.delay)
        sock = listening_socket() if sys.platform.startswith("linux") else None
        if sock is not None:
            try:
                drop_new_connections(sock)
                await wait_for_empty_queue(sock, QUEUE_SETTLE_S, timeout=2.0)
            except OSError as exc:
                log.warning("could not stop new connections before closing (%s)", exc)
        if sock is not None:
            sock.close()  # this worker's duplicate only; the filter stays on the shared socket
        self._forward(sig, frame)  # uvicorn: stop accepting, finish open requests, exit
