"""A direct lane for POST /classify and /classify_batch, ahead of BentoML's per-request middleware.

Why: BentoML wraps every request in about ten ASGI layers (error handler, traffic metrics,
OpenTelemetry, a timeout that starts one extra asyncio task per request, request context, exception
handler, its router, the mount, then our own app's layers). Measured in-process on the 2-core VM, that
stack cost 14-25% of a /classify request (README, "Load test"), and the extra task per request adds a
scheduling hop under load. The lane keeps what a user of the service relies on:

- BentoML's own Prometheus request metrics (the lane calls BentoML's traffic-metrics middleware
  instance, so `/metrics` counts /classify exactly as before) and our per-class prediction counter;
- the service's request timeout (an `asyncio.timeout`, no extra task), answered as 504 in our error shape;
- every other path (/readyz, /livez, /metrics, /model_info, /ui, BentoML's own routes) through the full stack.

It is not used when access logs or tracing are on (both live in the skipped layers), with
CIFAR10_FAST_LANE=off, or when BentoML's stack holds any layer not known to be safe to skip (CORS,
a concurrency cap, a user's middleware). It is installed by the first request that reaches our
mounted app, which is the moment BentoML's outer Starlette app is known (scope["app"]) and its
middleware stack is built.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .errors import RequestError

log = logging.getLogger("bentoml.cifar10_service")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+


# The layers the lane may skip: each does nothing a /classify caller needs that the lane does not
# redo. Any other layer in the stack (CORS, access log, a concurrency cap, a user's middleware) means
# the lane would change behaviour, so it is not installed.
SKIPPABLE = frozenset({"ServerErrorMiddleware", "RunnerTrafficMetricsMiddleware", "OpenTelemetryMiddleware",
                       "TimeoutMiddleware", "ContextMiddleware", "ExceptionMiddleware"})


def _layers(stack: Any, depth: int = 32) -> list[Any]:
    """The middleware instances of a built Starlette stack, outermost first, down to its Router."""
    layers = []
    for _ in range(depth):
        if stack is None or type(stack).__name__ == "Router":
            return layers
        layers.append(stack)
        stack = getattr(stack, "app", None)
    return layers


class FastLane:
    """Replaces the outer app's middleware stack: routes the hot paths directly, the rest as before."""

    def __init__(self, stack: ASGIApp, routes: dict[str, ASGIApp], timeout: float):
        self.stack = stack
        self.routes = routes
        self.timeout = timeout
        metrics = next((m for m in _layers(stack) if type(m).__name__ == "RunnerTrafficMetricsMiddleware"), None)
        if metrics is not None:
            # A copy of BentoML's own instance (same metric objects, already set up), with our
            # endpoint as the next layer instead of the rest of the stack.
            lane = object.__new__(type(metrics))
            lane.__dict__.update(metrics.__dict__)
            lane.app = self._timed
            self.entry: ASGIApp = lane
        else:  # metrics disabled in BentoML's configuration
            self.entry = self._timed
        self.with_metrics = metrics is not None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            await self.entry(scope, receive, send)
        else:
            await self.stack(scope, receive, send)

    async def _timed(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        route = self.routes[scope["path"]]
        try:
            if _HAS_TIMEOUT:
                async with asyncio.timeout(self.timeout):
                    await route(scope, receive, tracked_send)
            else:  # Python 3.10: wait_for costs the extra task the lane otherwise avoids
                await asyncio.wait_for(route(scope, receive, tracked_send), self.timeout)
        except (TimeoutError, asyncio.TimeoutError):
            if not started:
                await RequestError(504, "timeout", f"the request took longer than {self.timeout:g} s "
                                   "(a slow upload?)").response()(scope, receive, send)


def install(outer_app: Any, routes: dict[str, ASGIApp], timeout: float) -> bool:
    """Put a FastLane in front of `outer_app`'s built middleware stack; False (and a log line why) when
    it is not there or has a layer the lane must not skip."""
    stack = getattr(outer_app, "middleware_stack", None)
    if isinstance(stack, FastLane):
        return True
    if stack is None:
        log.warning("fast lane off: BentoML's app has no built middleware stack")
        return False
    kept = sorted({type(m).__name__ for m in _layers(stack)} - SKIPPABLE)
    if kept:
        log.info("fast lane off: BentoML's middleware includes %s, which the lane would skip", ", ".join(kept))
        return False
    try:
        lane = FastLane(stack, routes, timeout)
    except Exception as exc:  # a BentoML whose metrics layer cannot be copied this way: stay on the full stack
        log.warning("fast lane off: could not build it around BentoML's middleware (%s)", exc)
        return False
    outer_app.middleware_stack = lane
    log.info("fast lane on for %s (BentoML request metrics %s)", ", ".join(sorted(routes)),
             "kept" if lane.with_metrics else "disabled in BentoML's config")
    return True
