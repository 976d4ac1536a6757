"""BentoML's own typed endpoints and adaptive batching, for benchmarks/native_batching.py to set against the service.

Not the service (that is serving/service.py): the same model from the store, the same ONNX Runtime settings
(intra-op threads = CPUs, inter-op 1, no spinning), the same decoding (contract.images) and the same answer
object, but with BentoML 1.4's `@bentoml.api(batchable=True, ...)` doing the batching and BentoML's own
request parsing, validation, errors and OpenAPI (/docs.json) instead of serving/requests.py, serving/batching.py
and serving/openapi.py.

Two ways BentoML's documentation gives (docs.bentoml.com, "Adaptive batching"):

  CIFAR10Native        one service; its batchable endpoint takes "only one parameter" (the batch), so HTTP
                       sends a list: multipart `image` parts (one part = a list of one) and the answer is a
                       list. No top_k (fixed 3), and one exception in the batch function answers every
                       request batched with it.
      bentoml serve benchmarks.native_service:CIFAR10Native
  CIFAR10NativeFront   the documented pattern for per-request parameters: a front service with a plain
                       endpoint (one image, top_k) that decodes and refuses per request, calling a batchable
                       endpoint of a second service (bentoml.depends: another process) with the pixels.
      bentoml serve benchmarks.native_service:CIFAR10NativeFront
  CIFAR10NativePlain   CIFAR10Native's endpoint without batchable=True (BentoML's request handling alone).

Environment: CIFAR10_MODEL (default cifar10-simplecnn:latest), CIFAR10_MAX_PIXELS, NATIVE_MAX_LATENCY_MS (1000).
"""
from __future__ import annotations

import gc
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument
from PIL.Image import Image

from contract.constants import DEFAULT_MAX_PIXELS
from contract.cpus import worker_cpus
from contract.images import ImageError, to_input
from contract.onnx_session import onnx_session
from contract.schemas import ModelMetadata

MODEL_TAG = os.environ.get("CIFAR10_MODEL", "cifar10-simplecnn:latest")
MAX_PIXELS = int(os.environ.get("CIFAR10_MAX_PIXELS", DEFAULT_MAX_PIXELS))
MAX_LATENCY_MS = int(os.environ.get("NATIVE_MAX_LATENCY_MS", "1000"))
MAX_BATCH = 16  # the service's default (CIFAR10_MAX_BATCH)
# The same non-architectural settings as serving/service.py: no access log, no spans on the hot endpoint.
COMMON = dict(workers=1, traffic={"timeout": 35}, logging={"access": {"enabled": False}},
              tracing={"excluded_urls": ["/classify"]})


class ImageTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class _Model:
    """What both variants share: the session, the classes, the answer object of POST /classify."""

    model: Any  # each service declares its BentoModel at class scope

    def __init__(self) -> None:
        self._load(self.model)

    def _load(self, model: Any) -> None:
        model_dir = Path(model.path)
        self.meta = ModelMetadata.read(model_dir / "metadata.json")
        self.classes = list(self.meta.classes)
        self.size = self.meta.input_size
        self.session = onnx_session(str(model_dir / "model.onnx"), worker_cpus(), spinning=False)  # as the service
        self.model_ref = {"name": model.tag.name, "version": str(model.tag.version), "runtime": "onnx",
                          "device": "cpu"}
        for n in sorted({1, MAX_BATCH}):  # warm-up, as the service does
            self.infer(np.zeros((n, self.size, self.size, 3), dtype=np.uint8))
        gc.collect()
        gc.freeze()  # as serving/service.py: keeps full collections short under load

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"image": pixels})[0]

    def answers(self, images: list[Image]) -> list[dict[str, Any]]:
        """Each image's answer with the top 3 (a batchable endpoint takes no top_k)."""
        return [self.answer(p, 3) for p in self.infer(np.stack([_pixels(im, self.size) for im in images]))]

    def answer(self, probs: np.ndarray, k: int) -> dict[str, Any]:
        order = np.argsort(-probs, kind="stable")[:k]
        best = int(order[0])
        return {"label": self.classes[best], "index": best, "confidence": float(probs[best]),
                "top_k": [{"label": self.classes[i], "index": int(i), "probability": float(probs[i])} for i in order],
                "model": self.model_ref}


def _pixels(im: Image, size: int) -> np.ndarray:
    """A PIL image BentoML opened (header read, pixels not yet) -> uint8 [size, size, 3], through contract.images,
    with the service's pixel limit checked before decoding; refusals as BentoML exceptions (status + message)."""
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f"image_too_large: the image is {width}x{height} pixels; the limit is {MAX_PIXELS:,}")
    try:
        return to_input(im, size)
    except ImageError as exc:
        status = 413 if exc.code == "image_too_large" else 400
        raise BentoMLException(f"{exc.code}: {exc}", error_code=HTTPStatus(status)) from None


@bentoml.service(name="cifar10_native", **COMMON)
class CIFAR10Native(_Model):
    model = bentoml.models.BentoModel(MODEL_TAG)

    # One parameter, the batch: a request's multipart `image` parts are its list; the dispatcher concatenates
    # the lists of concurrent requests (up to 16 images) and splits the answer list back.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, image: list[Image]) -> list[dict[str, Any]]:
        return self.answers(image)


@bentoml.service(name="cifar10_native_plain", **COMMON)
class CIFAR10NativePlain(_Model):
    """CIFAR10Native without the batching (for the benchmark's attribution: BentoML's I/O alone)."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    @bentoml.api
    def classify(self, image: list[Image]) -> list[dict[str, Any]]:
        return self.answers(image)


@bentoml.service(name="cifar10_native_model", **COMMON)
class CIFAR10NativeModel(_Model):
    model = bentoml.models.BentoModel(MODEL_TAG)

    @bentoml.api(batchable=True, batch_dim=(0, 0), max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.infer(pixels)  # uint8 [N, 32, 32, 3] -> float32 [N, C]


@bentoml.service(name="cifar10_native_front", **COMMON)
class CIFAR10NativeFront(_Model):
    inner = bentoml.depends(CIFAR10NativeModel)
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.meta = ModelMetadata.read(Path(self.model.path) / "metadata.json")
        self.classes = list(self.meta.classes)
        self.size = self.meta.input_size
        self.model_ref = {"name": self.model.tag.name, "version": str(self.model.tag.version), "runtime": "onnx",
                          "device": "cpu"}
        gc.collect()
        gc.freeze()

    @bentoml.api
    async def classify(self, image: Image, top_k: int = 3) -> dict[str, Any]:
        if not 1 <= top_k <= len(self.classes):
            raise InvalidArgument(f"invalid_top_k: top_k must be from 1 to {len(self.classes)}, got {top_k}")
        pixels = _pixels(image, self.size)  # on the event loop, as the service does for small images
        probs = await self.inner.to_async.predict(pixels[None])
        return self.answer(np.asarray(probs)[0], top_k)
