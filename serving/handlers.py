"""The endpoints and the answers they shape. Each handler takes the service instance (model state: classes,
metadata, batcher, decoder, explainer, settings) and the request; serving/app.py gives it the service.

The API is described once, in serving/openapi.py, for /docs.json, the Swagger UI at / and BentoML's clients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from contract.constants import MAX_BATCH_IMAGES

from . import openapi
from .errors import RequestError
from .explain import data_url
from .platform import swagger
from .requests import parse, target_index, top_k

STATIC = Path(__file__).with_name("static")

PREDICTIONS = bentoml.metrics.Counter(
    name="cifar10_predictions_total",
    documentation="Images classified, by predicted label",
    labelnames=["label"],
)
# What an operator watches for drift (docs/serving.md, "Metrics"): the share of answers the OOD score flags, and
# the served confidence, both per image.
IN_DISTRIBUTION = bentoml.metrics.Counter(
    name="cifar10_in_distribution_total",
    documentation="Images classified, by whether the OOD score found them like the training images "
                  "(true, false; unknown for a model exported without the score)",
    labelnames=["in_distribution"],
)
CONFIDENCE = bentoml.metrics.Histogram(
    name="cifar10_confidence",
    documentation="The top class's probability of each classified image",
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)


def in_distribution(svc, score: Optional[float]) -> Optional[bool]:
    """score <= the export's threshold; None when the model has no score or no threshold."""
    if score is None or svc.ood_threshold is None:
        return None
    return bool(score <= svc.ood_threshold)


def answer(svc, probs: np.ndarray, k: int, ood_score: Optional[float], count: bool = True) -> dict[str, Any]:
    """One image's answer: the top class, its confidence, the top k, whether it looks like one of the classes at
    all, and the model that answered."""
    order = np.argsort(-probs, kind="stable")[:k]
    best = int(order[0])
    inside = in_distribution(svc, ood_score)
    if count:  # explanations are not counted as predictions
        PREDICTIONS.labels(label=svc.classes[best]).inc()
        IN_DISTRIBUTION.labels(in_distribution="unknown" if inside is None else str(inside).lower()).inc()
        CONFIDENCE.observe(float(probs[best]))
    return {
        "label": svc.classes[best], "index": best, "confidence": float(probs[best]),
        "top_k": [{"label": svc.classes[i], "index": int(i), "probability": float(probs[i])} for i in order],
        "ood_score": None if ood_score is None else round(float(ood_score), 4),
        "in_distribution": inside,
        "model": svc.model_ref,
    }


def info(svc) -> dict[str, Any]:
    m, s = svc.meta, svc.settings
    return {
        "model": svc.model_ref, "tag": str(svc.model.tag), "classes": svc.classes,
        "architecture": m.architecture, "input": m.input, "normalization": m.normalization,
        "tta_flip": m.tta_flip, "tta_translate": m.tta_translate,
        "metrics": m.metrics, "calibration": m.calibration, "explanation": m.explanation, "ood": m.ood,
        "source_checkpoint_sha256": m.source_checkpoint["sha256"], "members": m.members,
        "git_commit": m.git_commit, "exported_at": m.exported_at,
        "serving": {"batching": s.batching, "max_batch": svc.max_batch, "threads": s.threads,
                    "workers": s.workers, "max_upload_bytes": s.max_upload_bytes, "resize": s.resize,
                    "fast_lane": s.use_fast_lane, "shutdown_delay_s": s.shutdown_delay,
                    "api_keys": bool(s.api_keys)},
    }


async def classify(svc, request: Request) -> Response:
    req = await parse(request, "image", svc.settings.max_upload_bytes)
    if len(req.images) != 1:
        raise RequestError(400, "too_many_images", "send one 'image' to /classify; use /classify_batch for several")
    k = top_k(req.fields["top_k"], len(svc.classes))
    (pixels,) = await svc.decoder.decode(req.images)
    probs, ood = await svc.batcher.predict(pixels[None])  # [1, 32, 32, 3] -> [1, C], [1]
    return JSONResponse(answer(svc, probs[0], k, None if ood is None else float(ood[0])))


async def classify_batch(svc, request: Request) -> Response:
    req = await parse(request, "images", svc.settings.max_upload_bytes * 4, raw_ok=False)
    if not req.images:
        raise RequestError(400, "missing_field", "no images: send one or more 'images'")
    if len(req.images) > MAX_BATCH_IMAGES:
        raise RequestError(400, "too_many_images", f"{len(req.images)} images sent; /classify_batch takes at most "
                           f"{MAX_BATCH_IMAGES}")
    k = top_k(req.fields["top_k"], len(svc.classes))
    pixels = await svc.decoder.decode([(data, f"image {i + 1} ({name})") for i, (data, name) in enumerate(req.images)])
    probs, ood = await svc.batcher.predict(np.stack(pixels))  # [N, 32, 32, 3] -> [N, C], [N]
    return JSONResponse([answer(svc, p, k, None if ood is None else float(ood[i])) for i, p in enumerate(probs)])


async def explain(svc, request: Request) -> Response:
    req = await parse(request, "image", svc.settings.max_upload_bytes, extra=("target", "top_k"))
    if len(req.images) != 1:
        raise RequestError(400, "too_many_images", "send one 'image' to /explain")
    k = top_k(req.fields["top_k"], len(svc.classes))
    target = target_index(req.fields["target"], svc.classes)
    (pixels,) = await svc.decoder.decode(req.images)
    heat, probs, ood, png = await svc.explainer.explain(pixels, target)
    chosen = int(probs.argmax()) if target < 0 else target
    if "image/png" in request.headers.get("accept", ""):
        return Response(png, media_type="image/png")
    body = answer(svc, probs, k, ood, count=False)
    body["target"] = {"label": svc.classes[chosen], "index": chosen, "probability": float(probs[chosen])}
    body["heatmap"] = np.round(heat, 4).tolist()  # [H][W], row-major on the model's input grid
    body["overlay"] = data_url(png)
    body["explanation"] = svc.meta.explanation
    return JSONResponse(body)


async def model_info(svc, request: Request) -> Response:
    return JSONResponse(info(svc))


async def ui(svc, request: Request) -> Response:
    # Read per request: a few kB, and an edited page shows without a restart under --reload.
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


async def docs_page(svc, request: Request) -> Response:
    return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"))


async def docs_asset(svc, request: Request) -> Response:
    found = swagger.asset(request.path_params["name"])
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    content, media_type = found
    return Response(content, media_type=media_type, headers={"cache-control": "public, max-age=86400"})


async def docs_json(svc, request: Request) -> Response:
    return JSONResponse(openapi.document(_model_summary(svc)))


def _model_summary(svc) -> Optional[dict[str, Any]]:
    if svc is None:  # the app alone, without a service (a test): the document without model facts
        return None
    return {"classes": svc.classes, "tag": str(svc.model.tag), "architecture": svc.meta.architecture}
