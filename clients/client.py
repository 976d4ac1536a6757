"""A typed Python client for the service's HTTP API.

httpx rather than BentoML's SyncHTTPClient: that one needs all of bentoml installed on the caller's
side and discovers endpoints from the service's @bentoml.api schema, which does not describe
/classify (a Starlette route mounted into the service, see serving/app.py). httpx is one small
dependency, keeps a connection pool and is safe to share between threads.
"""
from __future__ import annotations

import base64
import io
import mimetypes
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional, Union

import httpx

from contract.constants import MAX_BATCH_IMAGES  # the service's limit per /classify_batch request

DEFAULT_URL = "http://localhost:3000"

# What classify() accepts: a path, the file's bytes, an open binary file, or a PIL image.
ImageInput = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Any]


class ServiceError(Exception):
    """The service answered with an error: its message, HTTP status and stable error code."""

    def __init__(self, message: str, status: int, code: str | None = None, url: str = ""):
        super().__init__(message)
        self.message, self.status, self.code, self.url = message, status, code, url

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status}{', ' + self.code if self.code else ''})"


class ServiceUnreachable(ConnectionError):
    """No answer from the service (refused, unresolvable, timed out, cut off): the URL tried and why."""

    def __init__(self, url: str, reason: str, timed_out: bool = False):
        super().__init__(f"no answer from the service at {url}: {reason}")
        # timed_out: connected and sent, no answer in time (that request's problem, perhaps not the next one's).
        self.url, self.reason, self.timed_out = url, reason, timed_out


@dataclass(frozen=True)
class Score:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `in_distribution` is False when the model's out-of-distribution score says the image is
    probably none of its classes, None when the model was exported without the score (or an older service)."""

    label: str
    index: int
    confidence: float
    top_k: tuple[Score, ...]
    model: dict[str, str]
    ood_score: Optional[float] = None
    in_distribution: Optional[bool] = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Prediction":
        score = body.get("ood_score")
        return cls(label=body["label"], index=int(body["index"]), confidence=float(body["confidence"]),
                   top_k=tuple(Score(s["label"], int(s["index"]), float(s["probability"])) for s in body["top_k"]),
                   model=dict(body.get("model", {})), ood_score=None if score is None else float(score),
                   in_distribution=body.get("in_distribution"))


@dataclass(frozen=True)
class Explanation:
    """The classification, the explained class (`target`), the heatmap (rows of floats in [0, 1] on the
    model's input grid) and the overlay PNG's bytes."""

    prediction: Prediction
    target: Score
    heatmap: list[list[float]]
    overlay_png: bytes

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Explanation":
        t = body["target"]
        png = base64.b64decode(body["overlay"].split(",", 1)[1])
        return cls(Prediction.from_json(body), Score(t["label"], int(t["index"]), float(t["probability"])),
                   body["heatmap"], png)

    def save_overlay(self, path: Union[str, os.PathLike]) -> Path:
        path = Path(path)
        path.write_bytes(self.overlay_png)
        return path


def image_part(image: ImageInput, name: str | None = None) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) for one multipart file part."""
    if isinstance(image, (bytes, bytearray)):
        return name or "image", bytes(image), "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return name or path.name, path.read_bytes(), ctype
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent losslessly as PNG
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return name or "image.png", buf.getvalue(), "image/png"
    if hasattr(image, "read"):
        named = getattr(image, "name", None)  # an int for TemporaryFile() and open(fd)
        filename = Path(named).name if isinstance(named, str) and named else "image"
        return name or filename, image.read(), "application/octet-stream"
    raise TypeError(f"cannot send a {type(image).__name__} as an image: give a path, bytes, a binary file "
                    "or a PIL image")


class Client:
    """Client("http://localhost:3000").classify("cat.jpg") -> Prediction.

    Retries (with backoff) only what is safe to repeat: connections that were never made and 503
    answers (the service still loading or shedding load). Everything else raises at once.
    api_key: sent as `Authorization: Bearer <key>` to a service that sets CIFAR10_API_KEYS (default:
    $CIFAR10_API_KEY, if set).
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 api_key: str | None = None):
        self.url = url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        key = api_key if api_key is not None else os.environ.get("CIFAR10_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if last:
                    raise ServiceUnreachable(self.url + path, str(exc) or type(exc).__name__) from None
            except httpx.TransportError as exc:  # sent, maybe processed: not ours to repeat
                raise ServiceUnreachable(self.url + path, str(exc) or type(exc).__name__,
                                         timed_out=isinstance(exc, httpx.TimeoutException)) from None
            else:
                if response.status_code != 503 or last:
                    return response
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        if isinstance(body, dict) and "error" in body:
            raise ServiceError(str(body["error"]), response.status_code, body.get("code"), str(response.url))
        text = response.text.strip()[:200] or response.reason_phrase
        raise ServiceError(f"unexpected answer from {response.url}: {text}", response.status_code, None,
                           str(response.url))

    def classify(self, image: ImageInput, top_k: int = 3) -> Prediction:
        # The image as the raw body: the service's cheapest encoding (905 against 764 req/s for multipart at
        # c=32 in docs/serving.md's load test). A type that is not image/* goes as octet-stream, so the
        # service decodes it and answers not_an_image rather than refusing the media type.
        name, data, ctype = image_part(image)
        headers = {"Content-Type": ctype if ctype.startswith("image/") else "application/octet-stream",
                   # the name the service's error messages use, as multipart's filename would carry it
                   "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"}
        body = self._json(self._request("POST", "/classify", content=data, params={"top_k": str(top_k)},
                                        headers=headers))
        return Prediction.from_json(body)

    def classify_batch(self, images: Iterable[ImageInput], top_k: int = 3) -> list[Prediction]:
        """Predictions in the order given; more than the service's 64 per request are sent in chunks."""
        parts = [("images", image_part(im)) for im in images]
        out: list[Prediction] = []
        for start in range(0, len(parts), MAX_BATCH_IMAGES):
            chunk = parts[start:start + MAX_BATCH_IMAGES]
            body = self._json(self._request("POST", "/classify_batch", files=chunk, data={"top_k": str(top_k)}))
            out.extend(Prediction.from_json(b) for b in body)
        return out

    def explain(self, image: ImageInput, target: Union[str, int, None] = None, top_k: int = 3) -> "Explanation":
        """Grad-CAM of the top class, or of `target` (a class name or index), with the overlay PNG."""
        data = {"top_k": str(top_k)}
        if target is not None:
            data["target"] = str(target)
        body = self._json(self._request("POST", "/explain", files={"image": image_part(image)}, data=data))
        return Explanation.from_json(body)

    def model_info(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/model_info"))

    def web_page(self, path: str = "/ui") -> str:
        """The HTML of one of the service's pages (the /ui page); ServiceError unless it answers 200."""
        response = self._request("GET", path)
        if response.status_code != 200:
            self._json(response)  # raises with the service's message
        return response.text

    def ready(self) -> bool:
        """True when /readyz answers 200; False while loading or when nothing answers (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceUnreachable(self.url + "/readyz", f"not ready after {timeout:g} s")
            time.sleep(interval)
