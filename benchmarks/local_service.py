"""A service process on this machine, for tests, benchmarks and smoke checks: a free port, a readiness
wait, and a stop that takes the whole process group (never anything found by name).

    with LocalService.bentoml("serving.service:CIFAR10Classifier", env={...}) as svc:
        Client(svc.url).classify("cat.jpg")
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence


def bentoml_launcher() -> list[str]:
    """The `bentoml` command of this Python's environment: its console script, or (BentoML installed with
    pip --target, say) the module."""
    cli = Path(sys.executable).parent / "bentoml"
    return [str(cli)] if cli.is_file() else [sys.executable, "-m", "bentoml"]


def with_project_path(env: dict, root: Path) -> dict:
    """env with the project root put first on PYTHONPATH, keeping what was there (e.g. a pip --target folder)."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], timeout: float, interval: float = 0.3,
               alive: Optional[Callable[[], bool]] = None) -> bool:
    """Poll ready() until it is true (True), the deadline passes or alive() turns false (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        if ready():
            return True
        time.sleep(interval)
    return False


class ServiceStartError(RuntimeError):
    """The process exited or never became ready; the message ends with the tail of its log."""


class LocalService:
    """A server subprocess on a free loopback port, in its own process group, with its output in a log file."""

    def __init__(self, cmd: Sequence[str], port: int, log: Path, env: Optional[dict] = None,
                 cwd: Optional[Path] = None, ready_path: Optional[str] = "/readyz", timeout: float = 120.0,
                 fail_on: Optional[str] = None):
        self.port = port
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{port}"
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if ready_path is None:
            ready = lambda: port_open(self.host, port)  # noqa: E731
        else:
            ready = lambda: http_ok(self.url + ready_path)  # noqa: E731
        # fail_on: a line in the log that means it never will be ready (a BentoML server whose worker refused to
        # start keeps running and restarting it), so the wait ends there instead of at the timeout.
        refused = lambda: fail_on is not None and fail_on in self.log_tail(20000)  # noqa: E731
        if not wait_until(ready, timeout, alive=lambda: self.proc.poll() is None and not refused()):
            exited = self.proc.poll() is not None
            self.stop()
            what = ("exited" if exited else f"logged {fail_on!r}" if refused()
                    else f"did not become ready in {timeout:g} s")
            raise ServiceStartError(f"{' '.join(cmd[:3])} {what}: {self.log_tail()}")

    @classmethod
    def bentoml(cls, target: str, env: Optional[dict] = None, cwd: Optional[Path] = None,
                log_dir: Optional[Path] = None, timeout: float = 120.0, port: Optional[int] = None,
                fail_on: Optional[str] = None) -> "LocalService":
        """`bentoml serve TARGET` from this Python's environment, ready when /readyz answers 200."""
        port = port or free_port()
        log = Path(log_dir or Path.cwd()) / f"serve-{port}.log"
        cmd = [*bentoml_launcher(), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
        return cls(cmd, port, log, env=env, cwd=cwd, timeout=timeout, fail_on=fail_on)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        """Send sig to the whole process group (the server and the workers it started)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 20.0) -> Optional[int]:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "LocalService":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
