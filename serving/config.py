"""Service settings, from the environment only (so `docker run -e ...` configures a container)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from contract.constants import DEFAULT_MAX_PIXELS
from contract.cpus import worker_cpus
from contract.images import DEFAULT_RESIZE, RESIZE_POLICIES

RUNTIMES = ("onnx", "onnx-int8", "torchscript")
TIMEOUT_S = 30  # the longest a request may take (answered 504 `timeout`); Kubernetes' grace period covers it
DEVICES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    """A bad CIFAR10_* setting; the service refuses to start with this message."""


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= 300:
        raise SettingsError(f"{name} must be from 0 to 300 seconds, got {value:g}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise SettingsError(f"{name} must be on or off, got {raw!r}")


def _api_keys(name: str) -> tuple[str, ...]:
    """The accepted API keys: a comma-separated list, or (a value starting with "/") the path of a file with one
    key per line, as a Kubernetes Secret is mounted. Unset: none, the service is open. Set but holding no key, or
    naming a file that cannot be read: a start-up error. Error messages never repeat the value (it may be a key)."""
    raw = os.environ.get(name)
    if raw is None:
        return ()
    text = raw.strip()
    if text.startswith("/") and "," not in text:
        try:
            text = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise SettingsError(f"{name} starts with '/', so it names a file of keys, and that file cannot be read "
                                f"({reason}); give the keys without a leading '/', or mount the file") from None
        source = f"the file {name} names"
    else:
        source = name
    keys = tuple(k.strip() for k in text.replace("\n", ",").split(",") if k.strip())
    if not keys:
        raise SettingsError(f"{source} holds no key; set one or more keys, or unset {name} to leave the service open")
    return keys


@dataclass(frozen=True)
class Settings:
    model_tag: str
    runtime: str
    device: str
    workers: int
    threads: int
    batching: bool
    max_batch: Optional[int]  # None: the model's measured default (metadata.json "serving"), else 16
    max_upload_bytes: int
    max_pixels: int
    access_log: bool
    tracing: bool
    fast_lane: bool
    shutdown_delay: float
    graceful_shutdown: bool
    # How a non-square upload is framed before the resize to the model's input (contract/images.py).
    resize: str = DEFAULT_RESIZE
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed or logged

    @property
    def use_fast_lane(self) -> bool:
        # Access logs and tracing live in the middleware the lane skips, so either one turns it off.
        return self.fast_lane and not self.access_log and not self.tracing

    @classmethod
    def from_env(cls) -> "Settings":
        workers = _int("CIFAR10_WORKERS", 1)
        return cls(
            model_tag=os.environ.get("CIFAR10_MODEL", "cifar10-simplecnn:latest"),
            runtime=choice("CIFAR10_RUNTIME", os.environ.get("CIFAR10_RUNTIME", "onnx").strip().lower(), RUNTIMES),
            device=choice("CIFAR10_DEVICE", os.environ.get("CIFAR10_DEVICE", "auto").strip().lower(), DEVICES),
            workers=workers,
            # Each worker gets its share of the CPUs it may run on; torch and onnxruntime would
            # otherwise each start one thread per core in every worker.
            threads=_int("CIFAR10_THREADS", max(1, worker_cpus() // workers)),
            batching=_bool("CIFAR10_BATCHING", True),
            # Unset: what the export recorded as measured for this network (serving/service.py), else 16.
            max_batch=_int("CIFAR10_MAX_BATCH", 0) or None,
            max_upload_bytes=_int("CIFAR10_MAX_UPLOAD_MB", 10) * 1024 * 1024,
            max_pixels=_int("CIFAR10_MAX_PIXELS", DEFAULT_MAX_PIXELS),
            resize=choice("CIFAR10_RESIZE", os.environ.get("CIFAR10_RESIZE", DEFAULT_RESIZE).strip().lower(),
                          RESIZE_POLICIES),
            access_log=_bool("CIFAR10_ACCESS_LOG", False),
            tracing=_bool("CIFAR10_TRACING", False),
            # /classify and /classify_batch skip BentoML's per-request middleware (serving/platform/fastlane.py).
            fast_lane=_bool("CIFAR10_FAST_LANE", True),
            # Seconds between SIGTERM (/readyz 503 from then on) and stopping new connections
            # (serving/platform/shutdown.py).
            shutdown_delay=_seconds("CIFAR10_SHUTDOWN_DELAY", 2.0),
            # off: BentoML's and uvicorn's own shutdown, which loses queued connections (benchmarks/shutdown.py).
            graceful_shutdown=_bool("CIFAR10_GRACEFUL_SHUTDOWN", True),
            # Set: every model endpoint wants `Authorization: Bearer <key>` (serving/auth.py).
            api_keys=_api_keys("CIFAR10_API_KEYS"),
        )
