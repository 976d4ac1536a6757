"""The fast lane's routing, metrics hand-off and timeout, on fake ASGI layers (no server)."""
import asyncio
import json

import pytest

from serving.platform import fastlane


class RunnerTrafficMetricsMiddleware:
    """Stands in for BentoML's layer of that name: counts what passes through it."""

    def __init__(self, app):
        self.app = app
        self.seen: list[str] = []
        self._is_setup = True  # BentoML's sets up its metrics on the first request, before the lane is installed

    async def __call__(self, scope, receive, send):
        self.seen.append(scope["path"])
        await self.app(scope, receive, send)


class Outer:
    """A built Starlette app as far as the lane cares: something with a middleware_stack."""

    def __init__(self, stack):
        self.middleware_stack = stack


def _call(app, method, path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path}, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def _responder(status, text):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": text.encode()})
    return app


class Router:
    """The end of a built stack, as in Starlette: where the lane stops looking at layers."""

    def __init__(self, text):
        self.respond = _responder(200, text)

    async def __call__(self, scope, receive, send):
        await self.respond(scope, receive, send)


def _stack():
    rest = Router("full stack")
    metrics = RunnerTrafficMetricsMiddleware(rest)
    return metrics, Outer(metrics)  # [metrics -> rest of BentoML's stack]


def test_hot_posts_take_the_lane_through_bentoml_metrics_and_the_rest_the_full_stack():
    metrics, outer = _stack()
    assert fastlane.install(outer, {"/classify": _responder(200, "lane")}, timeout=5)
    assert _call(outer.middleware_stack, "POST", "/classify") == (200, b"lane")
    assert _call(outer.middleware_stack, "GET", "/classify") == (200, b"full stack")
    assert _call(outer.middleware_stack, "POST", "/model_info") == (200, b"full stack")
    # The lane's copy of the metrics layer shares its state: both requests through it were counted.
    assert metrics.seen == ["/classify", "/classify", "/model_info"]


def test_install_is_idempotent_and_refuses_an_app_without_a_stack():
    _, outer = _stack()
    assert fastlane.install(outer, {"/classify": _responder(200, "lane")}, timeout=5)
    lane = outer.middleware_stack
    assert fastlane.install(outer, {"/classify": _responder(200, "other")}, timeout=5)
    assert outer.middleware_stack is lane
    assert not fastlane.install(Outer(None), {}, timeout=5)
    assert not fastlane.install(object(), {}, timeout=5)


def test_without_bentoml_metrics_the_lane_calls_the_route_directly():
    outer = Outer(Router("full stack"))
    fastlane.install(outer, {"/classify": _responder(201, "lane")}, timeout=5)
    assert not outer.middleware_stack.with_metrics
    assert _call(outer.middleware_stack, "POST", "/classify") == (201, b"lane")


@pytest.mark.parametrize("has_asyncio_timeout", [True, False], ids=["py311+", "py310"])
def test_a_request_over_the_timeout_is_a_504_in_the_service_error_shape(monkeypatch, has_asyncio_timeout):
    monkeypatch.setattr(fastlane, "_HAS_TIMEOUT", has_asyncio_timeout and hasattr(asyncio, "timeout"))

    async def slow(scope, receive, send):
        await asyncio.sleep(5)

    _, outer = _stack()
    fastlane.install(outer, {"/classify": slow}, timeout=0.05)
    status, body = _call(outer.middleware_stack, "POST", "/classify")
    assert status == 504
    assert json.loads(body)["code"] == "timeout"


def test_a_layer_the_lane_must_not_skip_keeps_every_request_on_the_full_stack():
    class CORSMiddleware(RunnerTrafficMetricsMiddleware):
        pass

    outer = Outer(RunnerTrafficMetricsMiddleware(CORSMiddleware(Router("full stack"))))
    assert not fastlane.install(outer, {"/classify": _responder(200, "lane")}, timeout=5)
    assert _call(outer.middleware_stack, "POST", "/classify") == (200, b"full stack")


def test_every_assumption_is_checked_and_a_broken_one_keeps_the_full_stack(monkeypatch, caplog):
    assert [a.name for a in fastlane.ASSUMPTIONS] == ["BentoML release", "built middleware stack", "middleware chain",
                                                      "known middleware only", "metrics layer copyable"]
    metrics, outer = _stack()
    assert fastlane.unmet_assumption(outer) is None  # the installed BentoML is a tested release

    import bentoml
    monkeypatch.setattr(bentoml, "__version__", "1.5.2")
    assert "BentoML 1.5.2 is outside the tested releases 1.4 to 1.5" in fastlane.unmet_assumption(outer)
    with caplog.at_level("WARNING", logger="bentoml.cifar10_service"):
        assert not fastlane.install(outer, {"/classify": _responder(200, "lane")}, timeout=5)
    assert "fast lane off: BentoML release" in caplog.text
    assert _call(outer.middleware_stack, "POST", "/classify") == (200, b"full stack")
    monkeypatch.undo()

    metrics._is_setup = False  # a metrics layer that has not run yet would register its metrics twice
    assert fastlane.unmet_assumption(outer).startswith("metrics layer copyable")
    metrics._is_setup = True
    metrics.app = object()  # a chain that never reaches the Router
    assert fastlane.unmet_assumption(outer).startswith("middleware chain")


def test_requests_off_the_lane_get_the_same_504_from_the_mounted_app(monkeypatch):
    # /explain, and every route with CIFAR10_FAST_LANE=off, take BentoML's whole stack: the mounted app times
    # them out itself, so they are answered in the service's error shape too (BentoML's own has no code).
    from serving.app import MountedApp

    async def slow(svc, request):
        await asyncio.sleep(5)

    app = MountedApp(fast_lane=False, timeout=0.05, endpoints={"/explain": (slow, ("POST",))})
    status, body = _call(app, "POST", "/explain")
    assert status == 504 and json.loads(body)["code"] == "timeout"
