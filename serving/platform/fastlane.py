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
CIFAR10_FAST_LANE=off, or when any of ASSUMPTIONS (what the lane takes for granted about BentoML and
Starlette internals) does not hold: then it logs which one and every request takes the full stack.
It is installed by the first request that reaches our mounted app, which is the moment BentoML's outer
Starlette app is known (scope["app"]) and its middleware stack is built.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from ..errors import RequestError
from . import outside_tested

log = logging.getLogger("bentoml.cifar10_service")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+


# The layers the lane may skip: each does nothing a /classify caller needs that the lane does not
# redo. Any other layer in the stack (CORS, access log, a concurrency cap, a user's middleware) means
# the lane would change behaviour, so it is not installed.
# SchemaRoutesMiddleware is this service's own (client_schema.py): it only answers GET /schema.json.
SKIPPABLE = frozenset({"ServerErrorMiddleware", "RunnerTrafficMetricsMiddleware", "OpenTelemetryMiddleware",
                       "TimeoutMiddleware", "ContextMiddleware", "ExceptionMiddleware", "SchemaRoutesMiddleware"})
METRICS_LAYER = "RunnerTrafficMetricsMiddleware"


def _layers(stack: Any, depth: int = 32) -> list[Any]:
    """The middleware instances of a built Starlette stack, outermost first, down to its Router."""
    layers = []
    for _ in range(depth):
        if stack is None or type(stack).__name__ == "Router":
            return layers
        layers.append(stack)
        stack = getattr(stack, "app", None)
    return layers


def _end_of_chain(stack: Any, depth: int = 32) -> Any:
    for _ in range(depth):
        if stack is None or type(stack).__name__ == "Router":
            return stack
        stack = getattr(stack, "app", None)
    return None


@dataclass(frozen=True)
class Assumption:
    """One thing the lane takes for granted about BentoML or Starlette; check(outer_app) says what is off."""

    name: str
    check: Callable[[Any], Optional[str]]


def _bentoml_in_tested_range(_: Any) -> Optional[str]:
    try:
        import bentoml
    except ImportError:
        return "bentoml is not importable"
    tested = outside_tested(bentoml.__version__)
    return f"BentoML {bentoml.__version__} is outside the tested releases {tested} (exclusive)" if tested else None


def _stack_is_built(outer: Any) -> Optional[str]:
    # Starlette builds `middleware_stack` on the first request and calls it for every request after;
    # replacing that attribute is how the lane gets in front.
    if getattr(outer, "middleware_stack", None) is None:
        return "BentoML's app has no built middleware_stack"
    return None


def _chain_ends_at_router(outer: Any) -> Optional[str]:
    # Each middleware reaches the next through its `.app`, and the chain ends at Starlette's Router.
    if _end_of_chain(getattr(outer, "middleware_stack", None)) is None:
        return "the middleware chain does not end at a Router through .app attributes"
    return None


def _only_skippable_layers(outer: Any) -> Optional[str]:
    kept = sorted({type(m).__name__ for m in _layers(getattr(outer, "middleware_stack", None))} - SKIPPABLE)
    if kept:
        return f"BentoML's middleware includes {', '.join(kept)}, which the lane would skip"
    return None


def _metrics_layer_is_copyable(outer: Any) -> Optional[str]:
    # The lane calls a copy of BentoML's metrics layer (same metric objects) with another `.app`. The layer
    # creates its metrics lazily on its first call; copying it before then would register them twice.
    metrics = next((m for m in _layers(getattr(outer, "middleware_stack", None))
                    if type(m).__name__ == METRICS_LAYER), None)
    if metrics is None:
        return None  # metrics disabled in BentoML's configuration: the lane calls the route directly
    if "app" not in vars(metrics):
        return f"{METRICS_LAYER} keeps no .app of its own to redirect"
    if vars(metrics).get("_is_setup") is not True:
        return f"{METRICS_LAYER} has not set up its metrics (no _is_setup = True) before the first lane request"
    return None


# Checked in this order by install(); the first that fails keeps the lane off (and is logged).
ASSUMPTIONS = (
    Assumption("BentoML release", _bentoml_in_tested_range),
    Assumption("built middleware stack", _stack_is_built),
    Assumption("middleware chain", _chain_ends_at_router),
    Assumption("known middleware only", _only_skippable_layers),
    Assumption("metrics layer copyable", _metrics_layer_is_copyable),
)


def unmet_assumption(outer_app: Any, assumptions=ASSUMPTIONS) -> Optional[str]:
    """'name: what is off' for the first assumption that does not hold, or None when all hold."""
    for a in assumptions:
        problem = a.check(outer_app)
        if problem:
            return f"{a.name}: {problem}"
    return None


class FastLane:
    """Replaces the outer app's middleware stack: routes the hot paths directly, the rest as before."""

    def __init__(self, stack: ASGIApp, routes: dict[str, ASGIApp], timeout: float):
        self.stack = stack
        self.routes = routes
        self.timeout = timeout
        metrics = next((m for m in _layers(stack) if type(m).__name__ == METRICS_LAYER), None)
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
        await answer_within(self.timeout, self.routes[scope["path"]], scope, receive, send)


async def answer_within(timeout: float, app: ASGIApp, scope: dict, receive: Callable, send: Callable) -> None:
    """Run an ASGI app with the service's request timeout; when it runs out before the answer has started,
    answer 504 `timeout` in the service's error shape (an `asyncio.timeout`: no extra task per request)."""
    started = False

    async def tracked_send(message: dict) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        if _HAS_TIMEOUT:
            async with asyncio.timeout(timeout):
                await app(scope, receive, tracked_send)
        else:  # Python 3.10: wait_for costs the extra task the lane otherwise avoids
            await asyncio.wait_for(app(scope, receive, tracked_send), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        if not started:
            await RequestError(504, "timeout", f"the request took longer than {timeout:g} s "
                               "(a slow upload?)").response()(scope, receive, send)


def install(outer_app: Any, routes: dict[str, ASGIApp], timeout: float, assumptions=ASSUMPTIONS) -> bool:
    """Put a FastLane in front of `outer_app`'s built middleware stack; False (and a log line why) when
    one of the assumptions does not hold."""
    if isinstance(getattr(outer_app, "middleware_stack", None), FastLane):
        return True
    problem = unmet_assumption(outer_app, assumptions)
    if problem:
        log.warning("fast lane off: %s", problem)
        return False
    try:
        lane = FastLane(outer_app.middleware_stack, routes, timeout)
    except Exception as exc:  # anything the checks above did not foresee: stay on the full stack
        log.warning("fast lane off: could not build it around BentoML's middleware (%s)", exc)
        return False
    outer_app.middleware_stack = lane
    log.info("fast lane on for %s (BentoML request metrics %s)", ", ".join(sorted(routes)),
             "kept" if lane.with_metrics else "disabled in BentoML's config")
    return True
