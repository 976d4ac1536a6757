"""The BentoML service: `bentoml serve` (reads bentofile.yaml) or `bentoml serve serving.service:CIFAR10Classifier`.

Configuration is by environment (see README "Serving"): CIFAR10_RUNTIME, CIFAR10_DEVICE,
CIFAR10_WORKERS, CIFAR10_THREADS, CIFAR10_BATCHING, CIFAR10_MAX_BATCH, CIFAR10_MAX_UPLOAD_MB,
CIFAR10_MAX_PIXELS, CIFAR10_RESIZE, CIFAR10_ACCESS_LOG, CIFAR10_TRACING, CIFAR10_FAST_LANE, CIFAR10_MODEL,
CIFAR10_API_KEYS.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import bentoml
import numpy as np

from contract.constants import MAX_BATCH_IMAGES
from contract.schemas import ModelMetadata

from .app import MountedApp
from .auth import ApiKeys
from .config import TIMEOUT_S, Settings, SettingsError
from .openapi import client_routes
from .platform.client_schema import SchemaRoutesMiddleware

log = logging.getLogger("bentoml.cifar10_service")
SETTINGS = Settings.from_env()
DEFAULT_MAX_BATCH = 16
# The endpoints (serving/app.py, serving/handlers.py); this instance answers them once bound in __init__.
APP = MountedApp(SETTINGS.use_fast_lane, TIMEOUT_S, api_keys=ApiKeys(SETTINGS.api_keys) if SETTINGS.api_keys else None)


@bentoml.asgi_app(APP, path="/")
@bentoml.service(
    name="cifar10_classifier",
    workers=SETTINGS.workers,
    # A backstop a little after the service's own timeout (serving/app.py answers that one as 504 `timeout`).
    traffic={"timeout": TIMEOUT_S + 5},
    # One formatted log line per request (and the full middleware stack it needs) costs 8-21% of
    # the requests/s (README, "Load test"); CIFAR10_ACCESS_LOG=on brings them back.
    logging={"access": {"enabled": SETTINGS.access_log}},
    # An OpenTelemetry span per request costs about a fifth of this service's CPU time per
    # request; spans for the hot endpoints are opt-in (CIFAR10_TRACING=on, with an exporter set).
    tracing={} if SETTINGS.tracing else {"excluded_urls": ["/classify", "/classify_batch"]},
    labels={"dataset": "cifar10", "model": "simplecnn"},
)
class CIFAR10Classifier:
    """Model state and lifecycle: load, warm up, be ready, drain. The endpoints live in serving/handlers.py."""

    # Declared at class scope so `bentoml build` packs this model into the bento.
    model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        from .backends import load_backend
        from .batching import MicroBatcher
        from .decoding import Decoder
        from .explain import ExplainRunner

        self._ready = False
        self.settings = SETTINGS
        model_dir = Path(self.model.path)
        self.meta = ModelMetadata.read(model_dir / "metadata.json")
        from contract.provenance import changed_files

        changed = changed_files(model_dir, self.meta.files)
        if changed:
            # An ensemble is one graph: a member swapped or edited after export shows here as a changed graph.
            raise SettingsError(f"{', '.join(changed)} of model {self.model.tag} no longer match the sha256 that "
                                "metadata.json recorded at export (changed after export); export the model again")
        self.classes: list[str] = list(self.meta.classes)
        self.input_size: int = self.meta.input_size
        # Large uploads decode on its pool, one image per job: memory is bounded by the pool's threads.
        self.decoder = Decoder(self.input_size, SETTINGS.max_pixels, SETTINGS.threads, SETTINGS.resize)
        self.backend = load_backend(model_dir, SETTINGS.runtime, SETTINGS.device, SETTINGS.threads)
        # The OOD score's threshold (export/ood.py); None for a model exported before the score existed.
        self.ood_threshold = float(self.meta.ood["threshold"]) if self.meta.ood else None
        # 16 bounds the wait behind a running batch for SimpleCNN: p99 at c=32 was 32-38 ms with 16 and 43-59 ms
        # with 64 on the 2-core VM, at equal or better requests/s (docs/serving.md, "Load test"). A network's own
        # measured value travels in metadata.json; CIFAR10_MAX_BATCH overrides both.
        self.max_batch = SETTINGS.max_batch or int(self.meta.serving.get("max_batch", DEFAULT_MAX_BATCH))
        self.batcher = MicroBatcher(self.backend, self.max_batch, SETTINGS.batching)
        self.explainer = ExplainRunner(model_dir, self.backend.runtime, self.backend.device)
        self.model_ref = {"name": self.model.tag.name, "version": str(self.model.tag.version),
                          "runtime": self.backend.runtime, "device": self.backend.device}
        # Warm-up: the first call allocates and picks kernels; /readyz stays 503 until it is done.
        for n in sorted({1, self.max_batch, MAX_BATCH_IMAGES}):
            self.backend(np.zeros((n, self.input_size, self.input_size, 3), dtype=np.uint8))
        self.explainer(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8), np.array([-1]))
        # Everything loaded so far lives as long as the process: moving it out of the collector's
        # view keeps full collections (the long p99 pauses under load) short.
        gc.collect()
        gc.freeze()
        from .platform.shutdown import GracefulShutdown

        self.shutdown = GracefulShutdown(SETTINGS.shutdown_delay, on_begin=self._stop_being_ready)
        if SETTINGS.graceful_shutdown:
            self.shutdown.install()
        APP.bind(self)
        self._ready = True
        log.info("cifar10_classifier ready: model %s, runtime %s, device %s, batching %s (max %d), threads %d",
                 self.model.tag, self.backend.runtime, self.backend.device, "on" if SETTINGS.batching else "off",
                 self.max_batch, SETTINGS.threads)

    def __is_ready__(self) -> bool:
        return self._ready

    def _stop_being_ready(self) -> None:
        self._ready = False  # /readyz 503 while draining: load balancers stop sending


# BentoML's clients read /schema.json: add this service's routes to it (serving/platform/client_schema.py).
CIFAR10Classifier.add_asgi_middleware(SchemaRoutesMiddleware, base_schema=CIFAR10Classifier.schema,
                                      routes=client_routes)
