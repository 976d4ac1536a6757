"""Everything in the service that reaches into BentoML, Starlette or uvicorn beyond their documented APIs, in one
fenced place: an upgrade of any of them has this file as its checklist.

  fastlane.py       /classify and /classify_batch ahead of BentoML's per-request middleware (its layers by name)
  shutdown.py       the graceful SIGTERM drain (uvicorn's signal handlers, the listening socket circus passes)
  swagger.py        Swagger UI's files from inside the installed bentoml package
  client_schema.py  this service's routes added to /schema.json in the shape BentoML's own client reads

Tested with BentoML TESTED_BENTOML (1.4.x; measured on 1.4.40 with Starlette 1.10 and uvicorn 0.55). Each entry
of ASSUMPTIONS is one thing taken for granted; `unmet()` checks those that can be read off the installed
packages without a server (tests/test_platform.py fails with the whole list when one breaks). The rest are
checked at run time (the fast lane logs "fast lane off: <why>" and leaves every request on the full stack) and by
the end-to-end tests named beside them.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable, Optional

# The BentoML releases this package was written and tested against: [first, last) by (major, minor).
TESTED_BENTOML = ((1, 4), (1, 5))


def outside_tested(version_text: str) -> Optional[str]:
    """The tested range as text ("1.4 to 1.5") when a BentoML version string lies outside it; None inside."""
    low, high = TESTED_BENTOML
    if low <= tuple(int(n) for n in re.findall(r"\d+", version_text)[:2]) < high:
        return None
    return f"{'.'.join(map(str, low))} to {'.'.join(map(str, high))}"


@dataclass(frozen=True)
class Assumption:
    where: str  # the file that relies on it
    text: str  # what is taken for granted
    check: Optional[Callable[[], Optional[str]]] = None  # what is off, or None; no check: see `tested_by`
    tested_by: str = ""


def _bentoml_release() -> Optional[str]:
    import bentoml

    tested = outside_tested(bentoml.__version__)
    return f"BentoML {bentoml.__version__} is outside {tested}" if tested else None


def _middleware_names() -> Optional[str]:
    # The fast lane skips BentoML's layers by class name (fastlane.SKIPPABLE): those classes must still exist.
    from _bentoml_impl.server import app as impl_app
    from bentoml._internal.server.http import instruments, traffic

    missing = [name for module, name in ((instruments, "RunnerTrafficMetricsMiddleware"),
                                         (traffic, "TimeoutMiddleware"), (impl_app, "ContextMiddleware"))
               if not inspect.isclass(getattr(module, name, None))]
    return f"BentoML no longer has {', '.join(missing)}" if missing else None


def _metrics_layer_sets_up_lazily() -> Optional[str]:
    # The lane copies the metrics layer after its first request; the layer marks that with _is_setup.
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    if "_is_setup" not in inspect.getsource(RunnerTrafficMetricsMiddleware):
        return "RunnerTrafficMetricsMiddleware no longer keeps _is_setup"
    return None


def _starlette_builds_its_stack_once() -> Optional[str]:
    from starlette.applications import Starlette

    source = inspect.getsource(Starlette.__call__)
    if "middleware_stack" not in source or not hasattr(Starlette, "build_middleware_stack"):
        return "Starlette no longer builds middleware_stack on the first call and reuses it"
    return None


def _uvicorn_signal_handlers() -> Optional[str]:
    import uvicorn

    server = uvicorn.Server
    if not callable(getattr(server, "handle_exit", None)):
        return "uvicorn.Server has no handle_exit"
    capture = getattr(server, "capture_signals", None)
    if capture is not None and "signal.signal" not in inspect.getsource(capture):
        return "uvicorn no longer installs its SIGTERM/SIGINT handlers with signal.signal"
    return None


def _worker_takes_fd() -> Optional[str]:
    from bentoml_cli.worker import http_api_server

    if "--fd" not in inspect.getsource(http_api_server):
        return "BentoML's HTTP worker no longer takes the listening socket as --fd"
    return None


def _swagger_files() -> Optional[str]:
    from .swagger import FILES, folder

    return None if folder() is not None else f"bentoml/_internal/server/static_content lacks one of {FILES}"


def _service_schema() -> Optional[str]:
    from _bentoml_sdk.service.factory import Service

    if not callable(getattr(Service, "schema", None)) or not callable(getattr(Service, "add_asgi_middleware", None)):
        return "bentoml's Service has no schema() or add_asgi_middleware()"
    return None


ASSUMPTIONS: tuple[Assumption, ...] = (
    Assumption("fastlane.py", "BentoML is a tested release (1.4.x)", _bentoml_release),
    Assumption("fastlane.py", "BentoML's per-request layers are RunnerTrafficMetricsMiddleware, TimeoutMiddleware, "
               "ContextMiddleware (plus Starlette's and OpenTelemetry's), reached through each layer's .app",
               _middleware_names, "tests/test_serving.py::test_fast_lane_keeps_bentoml_request_metrics"),
    Assumption("fastlane.py", "BentoML's metrics layer creates its metrics on its first call (_is_setup), so a copy "
               "made after that shares them", _metrics_layer_sets_up_lazily),
    Assumption("fastlane.py", "Starlette builds middleware_stack on the first request and calls that attribute for "
               "every later one", _starlette_builds_its_stack_once),
    Assumption("shutdown.py", "uvicorn handles SIGTERM/SIGINT with handlers set by signal.signal before the "
               "service's __init__ runs, which can be wrapped and called", _uvicorn_signal_handlers,
               "tests/test_shutdown.py"),
    Assumption("shutdown.py", "every worker gets the arbiter's listening socket (circus passes it as --fd N)",
               _worker_takes_fd, "tests/test_shutdown.py"),
    Assumption("swagger.py", "bentoml ships Swagger UI's css and js in _internal/server/static_content",
               _swagger_files,
               "tests/test_api.py::test_swagger_ui_at_root_with_offline_assets_and_links_between_pages"),
    Assumption("client_schema.py", "BentoML's client builds its methods from /schema.json's routes (name, route, "
               "input, output, batchable), which a middleware added with add_asgi_middleware can extend",
               _service_schema, "tests/test_api.py (BentoML's SyncHTTPClient against a real server)"),
)


def unmet() -> list[str]:
    """'where: what is off' for every assumption whose check fails against the installed packages."""
    out = []
    for a in ASSUMPTIONS:
        try:
            problem = a.check() if a.check else None
        except Exception as exc:  # an import or attribute that moved is a broken assumption too
            problem = f"checking it failed ({type(exc).__name__}: {exc})"
        if problem:
            out.append(f"{a.where}: {problem}")
    return out


def checklist() -> str:
    return "\n".join(f"- {a.where}: {a.text}" + (f" [end to end: {a.tested_by}]" if a.tested_by else "")
                     for a in ASSUMPTIONS)
