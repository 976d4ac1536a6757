"""/schema.json, extended with this service's routes so that BentoML's own clients
(bentoml.SyncHTTPClient(url).classify(image=...)) find them. The route entries' shape (name, route, input,
output, batchable) is what BentoML 1.4's client reads, not a documented format (serving/platform/__init__.py)."""
from __future__ import annotations

from typing import Any, Callable


class SchemaRoutesMiddleware:
    """Answers GET /schema.json with BentoML's own schema plus `routes()`. BentoML registers /schema.json before any
    mounted app, so only a middleware can extend it; every other request passes straight through."""

    def __init__(self, app, base_schema: Callable[[], dict[str, Any]], routes: Callable[[], list[dict[str, Any]]]):
        self.app = app
        self.base_schema = base_schema
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/schema.json" and scope["method"] == "GET":
            from starlette.responses import JSONResponse

            schema = dict(self.base_schema())
            known = {r["name"] for r in schema.get("routes", [])}
            schema["routes"] = [*schema.get("routes", []), *(r for r in self.routes() if r["name"] not in known)]
            await JSONResponse(schema)(scope, receive, send)
            return
        await self.app(scope, receive, send)
