"""The BentoML service: `bentoml serve` (reads bentofile.yaml) or `bentoml serve serving.service:CIFAR10Classifier`.

Configuration is by environment (see README "Serving"): CIFAR10_RUNTIME, CIFAR10_DEVICE,
CIFAR10_WORKERS, CIFAR10_THREADS, CIFAR10_BATCHING, CIFAR10_MAX_BATCH, CIFAR10_MAX_UPLOAD_MB,
CIFAR10_MAX_PIXELS, CIFAR10_ACCESS_LOG, CIFAR10_TRACING, CIFAR10_FAST_LANE, CIFAR10_MODEL.
"""
from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from contract.constants import MAX_BATCH_IMAGES
from contract.schemas import ModelMetadata

from .api import mounted_app
from .config import Settings
from .openapi import SchemaRoutesMiddleware

log = logging.getLogger("bentoml.cifar10_service")
SETTINGS = Settings.from_env()
TIMEOUT_S = 30
DEFAULT_MAX_BATCH = 16

PREDICTIONS = bentoml.metrics.Counter(
    name="cifar10_predictions_total",
    documentation="Images classified, by predicted label",
    labelnames=["label"],
)


def _public(record: Any) -> Any:
    return None if record is None else {k: v for k, v in record.items() if not k.startswith("_")}


@bentoml.asgi_app(mounted_app(SETTINGS.use_fast_lane, TIMEOUT_S), path="/")
@bentoml.service(
    name="cifar10_classifier",
    workers=SETTINGS.workers,
    # A backstop a little after the service's own timeout (serving/api.py answers that one as 504 `timeout`).
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
    # Declared at class scope so `bentoml build` packs this model into the bento.
    model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        from .backends import load_backend
        from .batching import MicroBatcher

        self._ready = False
        model_dir = Path(self.model.path)
        self.meta = ModelMetadata.read(model_dir / "metadata.json")
        self.classes: list[str] = list(self.meta.classes)
        self.input_size: int = self.meta.input_size
        self.max_upload_bytes = SETTINGS.max_upload_bytes
        self.max_pixels = SETTINGS.max_pixels
        # Large uploads decode here, one image per job (serving/api.py): memory is bounded by the pool's threads.
        self.decode_pool = ThreadPoolExecutor(max_workers=SETTINGS.threads, thread_name_prefix="decode")
        self.backend = load_backend(model_dir, SETTINGS.runtime, SETTINGS.device, SETTINGS.threads)
        # 16 bounds the wait behind a running batch for SimpleCNN: p99 at c=32 was 32-38 ms with 16 and 43-59 ms
        # with 64 on the 2-core VM, at equal or better requests/s (docs/serving.md, "Load test"). A network's own
        # measured value travels in metadata.json; CIFAR10_MAX_BATCH overrides both.
        self.max_batch = SETTINGS.max_batch or int(self.meta.serving.get("max_batch", DEFAULT_MAX_BATCH))
        self.batcher = MicroBatcher(self.backend, self.max_batch, SETTINGS.batching)
        from .explain import Explainer

        self.explainer = Explainer(model_dir, self.backend.runtime, self.backend.device)
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
        from .shutdown import GracefulShutdown

        self.shutdown = GracefulShutdown(SETTINGS.shutdown_delay, on_begin=self._stop_being_ready)
        if SETTINGS.graceful_shutdown:
            self.shutdown.install()
        self._ready = True
        log.info("cifar10_classifier ready: model %s, runtime %s, device %s, batching %s (max %d), threads %d",
                 self.model.tag, self.backend.runtime, self.backend.device, "on" if SETTINGS.batching else "off",
                 self.max_batch, SETTINGS.threads)

    def __is_ready__(self) -> bool:
        return self._ready

    def _stop_being_ready(self) -> None:
        self._ready = False  # /readyz 503 while draining: load balancers stop sending

    def answer(self, probs: np.ndarray, k: int, count: bool = True) -> dict[str, Any]:
        order = np.argsort(-probs, kind="stable")[:k]
        best = int(order[0])
        if count:  # explanations are not counted as predictions
            PREDICTIONS.labels(label=self.classes[best]).inc()
        return {
            "label": self.classes[best], "index": best, "confidence": float(probs[best]),
            "top_k": [{"label": self.classes[i], "index": int(i), "probability": float(probs[i])} for i in order],
            "model": self.model_ref,
        }

    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "model": self.model_ref, "tag": str(self.model.tag), "classes": self.classes,
            "architecture": m.architecture, "input": m.input, "normalization": m.normalization,
            "tta_flip": m.tta_flip, "tta_translate": m.tta_translate,
            "metrics": m.metrics, "calibration": _public(m.calibration), "explanation": m.explanation,
            "source_checkpoint_sha256": m.source_checkpoint["sha256"],
            "git_commit": m.git_commit, "exported_at": m.exported_at,
            "serving": {"batching": SETTINGS.batching, "max_batch": self.max_batch, "threads": SETTINGS.threads,
                        "workers": SETTINGS.workers, "max_upload_bytes": SETTINGS.max_upload_bytes,
                        "fast_lane": SETTINGS.use_fast_lane, "shutdown_delay_s": SETTINGS.shutdown_delay},
        }


# BentoML's clients read /schema.json: add this service's routes to it (serving/openapi.py).
CIFAR10Classifier.add_asgi_middleware(SchemaRoutesMiddleware, base_schema=CIFAR10Classifier.schema)
