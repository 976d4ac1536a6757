"""Request bodies: an upload's images and fields, whatever the encoding, with the same limits and refusals.

An image arrives in one of three encodings:
  multipart/form-data   `image` (or `images`) file parts, `top_k` field   (the documented default)
  a raw body            Content-Type image/*, application/octet-stream or none (curl -T cat.jpg, a PUT, as
                        TorchServe takes it; curl --data-binary's default form type too), ?top_k=N   (/classify only)
  JSON                  {"image": "<base64>", "top_k": 3} or {"images": [...]}; a base64 data: URL works too

Why not typed @bentoml.api endpoints: BentoML's multipart handling fetches a text `image` field as a URL,
answers validation errors in its own shape, and has no upload size limit; this service must refuse all three
with one JSON error shape (measured against BentoML's own in docs/serving.md).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from .errors import RequestError

# Multipart, JSON and raw images are counted on the body as received; base64 makes an image 4/3 larger, so
# a JSON body may be that much larger (plus room for the keys) for the same image limit.
JSON_OVERHEAD = 1024
ENCODINGS = ("send the image as multipart/form-data (curl -F 'image=@cat.jpg' ...), as the body with "
             "Content-Type image/* or application/octet-stream (curl --data-binary @cat.jpg -H 'Content-Type: "
             "image/jpeg' ...), or as JSON {\"image\": \"<base64>\"}")


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
