"""Routing: the Starlette app the BentoML service mounts at "/", every refusal in one error shape, and the fast
lane for the hot paths. The service instance binds itself here (`bind`) when it is ready; handlers get it
passed (serving/handlers.py).
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response

from . import handlers
from .auth import ApiKeys
from .errors import RequestError
from .platform import fastlane

log = logging.getLogger("bentoml.cifar10_service")
Handler = Callable[[Any, Request], Awaitable[Response]]

# path -> (handler, methods)
ENDPOINTS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "/classify": (handlers.classify, ("POST", "PUT")),  # PUT: curl -T, as TorchServe takes it
    "/classify_batch": (handlers.classify_batch, ("POST",)),
    "/explain": (handlers.explain, ("POST",)),
    "/model_info": (handlers.model_info, ("POST", "GET")),
    "/ui": (handlers.ui, ("GET",)),
    "/": (handlers.docs_page, ("GET",)),
    "/docs.json": (handlers.docs_json, ("GET",)),
    "/docs/static/{name}": (handlers.docs_asset, ("GET",)),
}
# Taken by the fast lane (serving/platform/fastlane.py), POST only.
HOT_PATHS = ("/classify", "/classify_batch")
# What CIFAR10_API_KEYS guards; the pages, /docs.json and BentoML's probes and /metrics stay open.
MODEL_PATHS = frozenset({"/classify", "/classify_batch", "/explain", "/model_info"})


class MountedApp(Starlette):
    """What the service mounts at "/": our routes, and with fast_lane the lane installed by the first request.

    A Starlette app, so that BentoML's PassiveMount routes here only the paths these routes match (BentoML's
    own /readyz, /metrics, /schema.json and its static files stay reachable). Only a request that reaches
    this mount sees BentoML's outer app (scope["app"] is still the outer Starlette here), so that is where
    the lane is put in place.
    """

    def __init__(self, fast_lane: bool, timeout: float,
                 endpoints: dict[str, tuple[Handler, tuple[str, ...]]] = ENDPOINTS, api_keys: Optional[ApiKeys] = None):
        self.service: Optional[Any] = None
        self.api_keys = api_keys
        guarded = {path: self._guard(handler, path in MODEL_PATHS) for path, (handler, _) in endpoints.items()}
        super().__init__(routes=[Route(path, guarded[path], methods=list(methods))
                                 for path, (_, methods) in endpoints.items()])
        # The same endpoints as plain ASGI apps, for the fast lane.
        self.hot_routes = {path: request_response(guarded[path]) for path in HOT_PATHS if path in guarded}
        self.fast_lane, self.timeout, self.installed = fast_lane, timeout, False

    def bind(self, service: Any) -> None:
        """The service instance the handlers answer with (set once its model is loaded and warm)."""
        self.service = service

    def _guard(self, handler: Handler, model_path: bool):
        """Every refusal as {"error", "code"}; anything unexpected as a logged 500 with the same shape. With API
        keys, a model path answers 401 `unauthorized` before its body is read."""
        async def endpoint(request: Request) -> Response:
            try:
                if model_path and self.api_keys is not None:
                    self.api_keys.check(request.headers.get("authorization"))
                return await handler(self.service, request)
            except RequestError as exc:
                return exc.response()
            except Exception:  # CancelledError is a BaseException and passes through
                log.exception("unexpected error in %s", request.url.path)
                return RequestError(500, "internal_error", "the service failed on this request; see its log").response()
        return endpoint

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.fast_lane and not self.installed:
            self.installed = True
            fastlane.install(scope.get("app"), self.hot_routes, self.timeout)  # logs why when it cannot
        # The same timeout and 504 `timeout` answer as the fast lane, for the requests that take BentoML's whole
        # stack (/explain; every route with the lane off): BentoML's own timeout, a little later, is the backstop
        # (its answer has no error code).
        await fastlane.answer_within(self.timeout, super().__call__, scope, receive, send)
