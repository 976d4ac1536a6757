"""The HTTP endpoints, as a Starlette app that the BentoML service mounts.

Why not typed @bentoml.api endpoints: BentoML's multipart handling fetches a text `image` field as
a URL, answers validation errors in its own shape, and has no upload size limit; this service must
refuse all three with one JSON error shape. The service instance (model, batcher, metrics) is
BentoML's: handlers reach it through bentoml.get_current_service(). The API is described once, in
serving/openapi.py, for /docs.json, the Swagger UI at / and BentoML's clients (/schema.json).

An image arrives in one of three encodings (the same limits and errors for each):
  multipart/form-data   `image` (or `images`) file parts, `top_k` field   (the documented default)
  a raw body            Content-Type image/*, application/octet-stream or none (curl -T cat.jpg, a PUT, as
                        TorchServe takes it; curl --data-binary's default form type too), ?top_k=N   (/classify only)
  JSON                  {"image": "<base64>", "top_k": 3} or {"images": [...]}; a base64 data: URL works too
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, request_response

from contract.constants import MAX_BATCH_IMAGES
from contract.images import ImageError, open_upload, to_input

from . import fastlane, openapi
from .errors import RequestError
from .explain import data_url

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("bentoml.cifar10_service")
# Multipart, JSON and raw images are counted on the body as received; base64 makes an image 4/3 larger, so
# a JSON body may be that much larger (plus room for the keys) for the same image limit.
JSON_OVERHEAD = 1024
ENCODINGS = ("send the image as multipart/form-data (curl -F 'image=@cat.jpg' ...), as the body with "
             "Content-Type image/* or application/octet-stream (curl --data-binary @cat.jpg -H 'Content-Type: "
             "image/jpeg' ...), or as JSON {\"image\": \"<base64>\"}")


def _service():
    import bentoml
    return bentoml.get_current_service()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_raw(media: str) -> bool:
    # No content type is what `curl -T cat.jpg` sends; x-www-form-urlencoded is what `curl --data-binary @cat.jpg`
    # sends unless told otherwise. Neither is a form here: the bytes decide (a non-image is not_an_image).
    return media.startswith("image/") or media in ("application/octet-stream", "", "application/x-www-form-urlencoded")


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


def _unquoted(raw: Any) -> Any:
    """A text field as sent: BentoML's own client JSON-encodes every non-file multipart field ("ship" arrives
    as '"ship"'), curl and browsers do not."""
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def _whole_number(raw: Any) -> Any:
    """An ASCII decimal string of at most 9 digits as an int; anything else unchanged (for the caller's error).
    (str.isdigit() accepts "²", and int() refuses it and numbers past 4,300 digits: both were a 500.)"""
    if isinstance(raw, str) and re.fullmatch(r"\+?[0-9]{1,9}", raw.strip()):
        return int(raw.strip())
    return raw


def top_k(raw: Any, num_classes: int) -> int:
    """top_k from a form field, a query parameter (strings) or a JSON value (an integer); default 3."""
    raw = _unquoted(raw)
    if raw is None or raw == "":
        return min(3, num_classes)
    raw = _whole_number(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise RequestError(400, "invalid_top_k", f"top_k must be a whole number from 1 to {num_classes}, got {raw!r}")
    if not 1 <= raw <= num_classes:
        raise RequestError(400, "invalid_top_k", f"top_k must be from 1 to {num_classes}, got {raw}")
    return raw


class Parsed:
    """One request's images (bytes and a name for messages) and its other fields, whatever the encoding."""

    def __init__(self, images: list[tuple[bytes, str]], fields: dict[str, Any]):
        self.images, self.fields = images, fields


async def parse(request: Request, field: str, limit: int, extra: tuple[str, ...] = ("top_k",),
                raw_ok: bool = True) -> Parsed:
    """The images under `field` ("image" or "images") and the `extra` fields, from any of the three encodings."""
    media = _media_type(request)
    if media == "multipart/form-data":
        return await _parse_multipart(request, field, limit, extra)
    if media == "application/json":
        return _parse_json(await _read_body(request, limit * 4 // 3 + JSON_OVERHEAD), field, limit, extra)
    if raw_ok and _is_raw(media):
        data = await _read_body(request, limit)
        return Parsed([(data, _raw_name(request))], {k: request.query_params.get(k) for k in extra})
    if not raw_ok and _is_raw(media):
        raise RequestError(415, "unsupported_media_type", f"a raw body holds one image; send several as "
                           f"multipart '{field}' parts or as JSON {{\"{field}\": [\"<base64>\", ...]}}")
    raise RequestError(415, "unsupported_media_type", f"{ENCODINGS}, not {media or 'a body without a content type'}")


def _raw_name(request: Request) -> str:
    """A raw body's file name, for error messages: Content-Disposition's filename* (RFC 6266) or filename, as
    `curl -H 'Content-Disposition: attachment; filename="cat.jpg"'` and clients.Client send it; else "image"."""
    header = request.headers.get("content-disposition", "")
    match = re.search(r"filename\*\s*=\s*UTF-8''([^;\s]+)", header, re.I)
    name = urllib.parse.unquote(match.group(1)) if match else None
    if name is None:
        match = re.search(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', header, re.I)
        name = (match.group(1) or match.group(2)) if match else None
    name = Path(name.replace("\\", "/")).name if name else ""
    return "".join(c for c in name if c.isprintable())[:200] or "image"


async def _parse_multipart(request: Request, field: str, limit: int, extra: tuple[str, ...]) -> Parsed:
    body = await _read_body(request, limit)
    try:
        # The byte limit above already bounds the work; these only stop absurd part counts.
        form = await Request(request.scope, _replay(body)).form(max_files=4096, max_fields=64)
    except Exception as exc:  # python-multipart's errors carry no stable type across versions
        raise RequestError(400, "malformed_multipart", f"the multipart body could not be parsed ({exc})") from None
    if field not in form:
        raise RequestError(400, "missing_field", f"the form has no '{field}' field (curl -F '{field}=@cat.jpg' ...)")
    images = []
    for value in form.getlist(field):
        if not isinstance(value, UploadFile):
            raise RequestError(400, "not_a_file", f"the '{field}' field must be a file upload "
                               f"(curl -F '{field}=@cat.jpg'); text values, URLs included, are not accepted")
        images.append((await value.read(), value.filename or "image"))
    fields = {}
    for k in extra:
        raw = form.get(k)
        if isinstance(raw, UploadFile):
            raise RequestError(400, f"invalid_{k}", f"{k} must be a text field, not a file")
        fields[k] = raw
    return Parsed(images, fields)


def _parse_json(body: bytes, field: str, limit: int, extra: tuple[str, ...]) -> Parsed:
    try:
        doc = json.loads(body)
    except RecursionError:  # e.g. 100,000 "[": deeper than the parser's stack
        raise RequestError(400, "malformed_json", "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise RequestError(400, "malformed_json", f"the body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "malformed_json", f"the JSON body must be an object like {{\"{field}\": \"<base64>\"}}")
    unknown = sorted(set(doc) - {field, *extra})
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown key(s) {', '.join(map(repr, unknown))}; this endpoint "
                           f"takes {', '.join(repr(k) for k in (field, *extra))}")
    if field not in doc:
        raise RequestError(400, "missing_field", f"the JSON body has no '{field}' key")
    values = doc[field] if field == "images" else [doc[field]]
    if field == "images" and not isinstance(values, list):
        raise RequestError(400, "invalid_base64", "'images' must be a list of base64 strings")
    images = [(_b64(v, limit, f"{field}[{i}]" if field == "images" else field), f"image {i + 1}")
              for i, v in enumerate(values)]
    return Parsed(images, {k: doc.get(k) for k in extra})


def _b64(value: Any, limit: int, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, "invalid_base64", f"'{where}' must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:"):  # a data URL, as a browser's FileReader makes: data:image/png;base64,....
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise RequestError(400, "invalid_base64", f"'{where}' is a data: URL without ;base64")
    if len(text) > (limit * 4 // 3 + 4):
        raise RequestError(413, "payload_too_large", f"'{where}' decodes to more than the limit of {limit:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise RequestError(400, "invalid_base64", f"'{where}' is not base64 ({shown!r}); send the image's bytes "
                           "base64-encoded, URLs are never fetched") from None
    if len(data) > limit:
        raise RequestError(413, "payload_too_large", f"'{where}' is {len(data):,} bytes; the limit is {limit:,}")
    return data


# A request whose images hold few pixels decodes on the event loop (a CIFAR-10 JPEG: 1,024 pixels, tens of
# microseconds, less than a thread hop). Larger ones, up to CIFAR10_MAX_PIXELS each (a 40 MP image takes 0.2-0.5 s
# and 0.16-0.63 GB while it decodes), go to the decode pool, so that they never stall other requests, /readyz and
# /livez. The headers decide, not the byte counts: a 1.7 kB lossless WebP can hold 40 M pixels (measured
# 2026-11-30). Headers are read on the loop only for small bodies (a large TIFF's tags are parsed in Python).
INLINE_DECODE_PIXELS = 128 * 128
INLINE_HEADER_BYTES = 64 * 1024


def _checked(name: str, step, *args):
    try:
        return step(*args)
    except ImageError as exc:
        status = 413 if exc.code == "image_too_large" else 400
        raise RequestError(status, exc.code, f"{name}: {exc}") from None


def _opened(data: bytes, svc, name: str):
    return _checked(name, open_upload, data, svc.max_pixels)


async def _decode(images: list[tuple[bytes, str]], svc) -> list[np.ndarray]:
    """Every (bytes, name) of a request decoded, in order; the first bad one raises its RequestError."""
    jobs: list = list(images)
    if sum(len(data) for data, _ in images) <= INLINE_HEADER_BYTES:
        jobs = [(_opened(data, svc, name), name) for data, name in images]
        if sum(im.width * im.height for im, _ in jobs) <= INLINE_DECODE_PIXELS:
            return [_checked(name, to_input, im, svc.input_size) for im, name in jobs]
    # One image per job on the worker's decode pool (svc.decode_pool: as many threads as the worker has CPUs to
    # use): concurrent large uploads take turns image by image, use every CPU, and hold memory for the pool's
    # threads only (8 concurrent 40 MP uploads: 2.6 GB on anyio's 40-thread pool, 1.9 GB on this pool of 2, and
    # 1.9 GB for 16, before decoding stopped copying the image twice; docs/serving.md). A request that times out
    # or whose client left stops before its next image instead of decoding the rest for nobody.
    loop = asyncio.get_running_loop()
    out = []
    for job, name in jobs:
        out.append(await loop.run_in_executor(svc.decode_pool, _decode_job, job, name, svc))
    return out


def _decode_job(job, name: str, svc) -> np.ndarray:
    im = _opened(job, svc, name) if isinstance(job, bytes) else job
    return _checked(name, to_input, im, svc.input_size)


async def classify(request: Request) -> Response:
    svc = _service()
    req = await parse(request, "image", svc.max_upload_bytes)
    if len(req.images) != 1:
        raise RequestError(400, "too_many_images", "send one 'image' to /classify; use /classify_batch for several")
    k = top_k(req.fields["top_k"], len(svc.classes))
    (pixels,) = await _decode(req.images, svc)
    probs = await svc.batcher.predict(pixels[None])  # [1, 32, 32, 3] -> [1, C]
    return JSONResponse(svc.answer(probs[0], k))


async def classify_batch(request: Request) -> Response:
    svc = _service()
    req = await parse(request, "images", svc.max_upload_bytes * 4, raw_ok=False)
    if not req.images:
        raise RequestError(400, "missing_field", "no images: send one or more 'images'")
    if len(req.images) > MAX_BATCH_IMAGES:
        raise RequestError(400, "too_many_images", f"{len(req.images)} images sent; /classify_batch takes at most "
                           f"{MAX_BATCH_IMAGES}")
    k = top_k(req.fields["top_k"], len(svc.classes))
    pixels = await _decode([(data, f"image {i + 1} ({name})") for i, (data, name) in enumerate(req.images)], svc)
    probs = await svc.batcher.predict(np.stack(pixels))  # [N, 32, 32, 3] -> [N, C]
    return JSONResponse([svc.answer(p, k) for p in probs])


def target_index(raw: Any, classes: list[str]) -> int:
    """The explained class: a class name or an index (a form/query string or a JSON integer); -1 for the top one."""
    raw = _unquoted(raw)
    if raw is None or raw == "":
        return -1
    if isinstance(raw, str) and raw.strip() in classes:
        return classes.index(raw.strip())
    raw = _whole_number(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(classes):
        return raw
    raise RequestError(400, "invalid_target", f"target must be one of {', '.join(classes)} or an index from 0 to "
                       f"{len(classes) - 1}, got {raw!r}")


async def explain(request: Request) -> Response:
    svc = _service()
    req = await parse(request, "image", svc.max_upload_bytes, extra=("target", "top_k"))
    if len(req.images) != 1:
        raise RequestError(400, "too_many_images", "send one 'image' to /explain")
    k = top_k(req.fields["top_k"], len(svc.classes))
    target = target_index(req.fields["target"], svc.classes)
    (pixels,) = await _decode(req.images, svc)
    heat, probs, png = await svc.explainer.explain(pixels, target)
    chosen = int(probs.argmax()) if target < 0 else target
    if "image/png" in request.headers.get("accept", ""):
        return Response(png, media_type="image/png")
    body = svc.answer(probs, k, count=False)
    body["target"] = {"label": svc.classes[chosen], "index": chosen, "probability": float(probs[chosen])}
    body["heatmap"] = np.round(heat, 4).tolist()  # [H][W], row-major on the model's input grid
    body["overlay"] = data_url(png)
    body["explanation"] = svc.meta.explanation
    return JSONResponse(body)


async def model_info(request: Request) -> Response:
    return JSONResponse(_service().info())


async def ui(request: Request) -> Response:
    # Read per request: a few kB, and an edited page shows without a restart under --reload.
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


async def docs_page(request: Request) -> Response:
    return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"))


# Swagger UI's files, as BentoML ships them (its own docs page uses the same): read from the installed package.
SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")
SWAGGER_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _swagger_dir() -> Optional[Path]:
    try:
        from bentoml._internal import server
    except ImportError:
        return None
    folder = Path(server.__file__).parent / "static_content"
    return folder if all((folder / f).is_file() for f in SWAGGER_FILES) else None


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    folder = _swagger_dir()
    if name not in SWAGGER_FILES or folder is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((folder / name).read_bytes(), media_type=SWAGGER_TYPES[Path(name).suffix],
                    headers={"cache-control": "public, max-age=86400"})


async def docs_json(request: Request) -> Response:
    return JSONResponse(openapi.document(_model_summary()))


def _model_summary() -> Optional[dict[str, Any]]:
    try:
        svc = _service()
    except Exception:  # no service instance (a test of the app alone): the document without model facts
        return None
    return {"classes": svc.classes, "tag": str(svc.model.tag), "architecture": svc.meta.architecture}


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


ROUTES = [
    Route("/classify", _guard(classify), methods=["POST", "PUT"]),  # PUT: curl -T, as TorchServe takes it
    Route("/classify_batch", _guard(classify_batch), methods=["POST"]),
    Route("/explain", _guard(explain), methods=["POST"]),
    Route("/model_info", _guard(model_info), methods=["POST", "GET"]),
    Route("/ui", ui, methods=["GET"]),
    Route("/", docs_page, methods=["GET"]),
    Route("/docs.json", docs_json, methods=["GET"]),
    Route("/docs/static/{name}", docs_asset, methods=["GET"]),
]
# The same handlers as plain ASGI apps, for the fast lane (serving/fastlane.py).
HOT_ROUTES = {"/classify": request_response(_guard(classify)),
              "/classify_batch": request_response(_guard(classify_batch))}


class MountedApp(Starlette):
    """What the service mounts at "/": our routes, and with fast_lane the lane installed by the first request.

    A Starlette app, so that BentoML's PassiveMount routes here only the paths these routes match (BentoML's
    own /readyz, /metrics, /schema.json and its static files stay reachable). Only a request that reaches
    this mount sees BentoML's outer app (scope["app"] is still the outer Starlette here), so that is where
    the lane is put in place.
    """

    def __init__(self, fast_lane: bool, timeout: float):
        super().__init__(routes=ROUTES)
        self.fast_lane, self.timeout, self.installed = fast_lane, timeout, False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.fast_lane and not self.installed:
            self.installed = True
            fastlane.install(scope.get("app"), HOT_ROUTES, self.timeout)  # logs why when it cannot
        # The same timeout and 504 `timeout` answer as the fast lane, for the requests that take BentoML's whole
        # stack (/explain; every route with the lane off): BentoML's own timeout, a little later, is the backstop
        # (its answer has no error code).
        await fastlane.answer_within(self.timeout, super().__call__, scope, receive, send)


def mounted_app(fast_lane: bool, timeout: float) -> MountedApp:
    return MountedApp(fast_lane, timeout)
