"""The HTTP endpoints, as a Starlette app that the BentoML service mounts.

Why not typed @bentoml.api endpoints: BentoML's multipart handling fetches a text `image` field as
a URL, answers validation errors in its own shape, and has no upload size limit; this service must
refuse all three with one JSON error shape. The service instance (model, batcher, metrics) is
BentoML's: handlers reach it through bentoml.get_current_service().
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, request_response

from contract.constants import MAX_BATCH_IMAGES
from contract.images import ImageError, decode

from . import fastlane
from .errors import RequestError

UI_PAGE = Path(__file__).with_name("static") / "index.html"
log = logging.getLogger("bentoml.cifar10_service")


def _service():
    import bentoml
    return bentoml.get_current_service()


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body once, refusing it (413) as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "payload_too_large", f"the upload is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "payload_too_large", f"the upload is over the limit of {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client_disconnected", "the client closed the connection mid-upload") from None
    return b"".join(chunks)


def _replay(body: bytes):
    """An ASGI receive that hands out a body already read, for a second Request over the same scope."""
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


async def _form(request: Request, limit: int):
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise RequestError(415, "unsupported_media_type",
                           "send the image as multipart/form-data (curl -F 'image=@cat.jpg' ...), "
                           f"not {media or 'a body without a content type'}")
    body = await _read_body(request, limit)
    try:
        # The byte limit above already bounds the work; these only stop absurd part counts.
        return await Request(request.scope, _replay(body)).form(max_files=4096, max_fields=64)
    except Exception as exc:  # python-multipart's errors carry no stable type across versions
        raise RequestError(400, "malformed_multipart", f"the multipart body could not be parsed ({exc})") from None


async def _file_bytes(value: Any, field: str) -> bytes:
    if not isinstance(value, UploadFile):
        raise RequestError(400, "not_a_file", f"the '{field}' field must be a file upload "
                           f"(curl -F '{field}=@cat.jpg'); "
                           "text values, URLs included, are not accepted")
    return await value.read()


def _top_k(form, num_classes: int) -> int:
    raw = form.get("top_k")
    if raw is None or raw == "":
        return min(3, num_classes)
    if isinstance(raw, UploadFile) or not str(raw).strip().lstrip("+").isdigit():
        raise RequestError(400, "invalid_top_k", f"top_k must be a whole number from 1 to {num_classes}, got {raw!r}")
    k = int(str(raw).strip())
    if not 1 <= k <= num_classes:
        raise RequestError(400, "invalid_top_k", f"top_k must be from 1 to {num_classes}, got {k}")
    return k


def _decode(data: bytes, svc, name: str) -> np.ndarray:
    try:
        return decode(data, svc.input_size, svc.max_pixels)
    except ImageError as exc:
        status = 413 if exc.code == "image_too_large" else 400
        raise RequestError(status, exc.code, f"{name}: {exc}") from None


async def classify(request: Request) -> Response:
    svc = _service()
    form = await _form(request, svc.max_upload_bytes)
    if "image" not in form:
        raise RequestError(400, "missing_field", "the form has no 'image' field (curl -F 'image=@cat.jpg' ...)")
    images = form.getlist("image")
    if len(images) != 1:
        raise RequestError(400, "too_many_images", "send one 'image' to /classify; use /classify_batch for several")
    k = _top_k(form, len(svc.classes))
    data = await _file_bytes(images[0], "image")
    pixels = _decode(data, svc, images[0].filename or "image")
    probs = await svc.batcher.predict(pixels[None])  # [1, 32, 32, 3] -> [1, C]
    return JSONResponse(svc.answer(probs[0], k))


async def classify_batch(request: Request) -> Response:
    svc = _service()
    form = await _form(request, svc.max_upload_bytes * 4)
    files = form.getlist("images")
    if not files:
        raise RequestError(400, "missing_field", "the form has no 'images' field "
                           "(curl -F 'images=@a.jpg' -F 'images=@b.png' ...)")
    if len(files) > MAX_BATCH_IMAGES:
        raise RequestError(400, "too_many_images", f"{len(files)} images sent; /classify_batch takes at most "
                           f"{MAX_BATCH_IMAGES}")
    k = _top_k(form, len(svc.classes))
    pixels = []
    for i, f in enumerate(files):
        data = await _file_bytes(f, "images")
        pixels.append(_decode(data, svc, f"image {i + 1} ({getattr(f, 'filename', '') or 'unnamed'})"))
    probs = await svc.batcher.predict(np.stack(pixels))  # [N, 32, 32, 3] -> [N, C]
    return JSONResponse([svc.answer(p, k) for p in probs])


async def model_info(request: Request) -> Response:
    return JSONResponse(_service().info())


async def ui(request: Request) -> Response:
    # Read per request: a few kB, and an edited page shows without a restart under --reload.
    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))


def _guard(handler):
    """Every refusal as {"error", "code"}; anything unexpected as a logged 500 with the same shape."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return exc.response()
        except Exception:  # CancelledError is a BaseException and passes through
            log.exception("unexpected error in %s", request.url.path)
            return RequestError(500, "internal_error", "the service failed on this request; see its log").response()
    return endpoint


app = Starlette(routes=[
    Route("/classify", _guard(classify), methods=["POST"]),
    Route("/classify_batch", _guard(classify_batch), methods=["POST"]),
    Route("/model_info", _guard(model_info), methods=["POST", "GET"]),
    Route("/ui", ui, methods=["GET"]),
])
# The same handlers as plain ASGI apps, for the fast lane (serving/fastlane.py).
HOT_ROUTES = {"/classify": request_response(_guard(classify)),
              "/classify_batch": request_response(_guard(classify_batch))}


def mounted_app(fast_lane: bool, timeout: float):
    """What the service mounts at "/": `app`, and with fast_lane the lane installed by the first request.

    Only a request that reaches this mount sees BentoML's outer app (scope["app"] is still the outer
    Starlette here; the mounted app overwrites it next), so that is where the lane is put in place.
    """
    if not fast_lane:
        return app
    installed = False

    async def mount(scope, receive, send):
        nonlocal installed
        if not installed and scope["type"] == "http":
            installed = True
            fastlane.install(scope.get("app"), HOT_ROUTES, timeout)  # logs why when it cannot
        await app(scope, receive, send)
    return mount
