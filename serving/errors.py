"""One error body for every refusal: {"error": "<sentence>", "code": "<stable_code>"}, and the list of codes.

CODES is the one list the API documentation (serving/openapi.py) and the tests read: a code used anywhere
must be here, with its HTTP status and what it means for a client.
"""
from __future__ import annotations

from typing import Optional

from starlette.responses import JSONResponse

CODES: dict[str, tuple[int, str]] = {
    "not_an_image": (400, "the bytes are not an image in a format the service reads"),
    "corrupt_image": (400, "the image is truncated or corrupt"),
    "empty_file": (400, "the image is empty"),
    "missing_field": (400, "no image was sent (no 'image'/'images' field or key)"),
    "not_a_file": (400, "a multipart text field (a URL, say) where a file belongs; URLs are never fetched"),
    "invalid_top_k": (400, "top_k is not a whole number from 1 to the number of classes"),
    "invalid_target": (400, "the explanation's target is neither a class name nor an index in range"),
    "too_many_images": (400, "more than one image on /classify, or more than 64 on /classify_batch"),
    "malformed_multipart": (400, "the multipart body could not be parsed"),
    "malformed_json": (400, "the JSON body is not valid JSON, or not an object"),
    "invalid_base64": (400, "a JSON image that is not base64 (or a base64 data: URL); URLs are never fetched"),
    "unknown_field": (400, "a JSON key the endpoint does not take"),
    "client_disconnected": (400, "the client closed the connection during the upload"),
    "payload_too_large": (413, "the body is over CIFAR10_MAX_UPLOAD_MB (4x for a batch)"),
    "image_too_large": (413, "the image has more pixels than CIFAR10_MAX_PIXELS (read from its header)"),
    "unsupported_media_type": (415, "the body is neither multipart/form-data, JSON, nor a raw image"),
    "unauthorized": (401, "CIFAR10_API_KEYS is set and the request has no 'Authorization: Bearer <key>' with an "
                     "accepted key"),
    "timeout": (504, "the request took longer than the service's 30 s timeout"),
    "internal_error": (500, "the service failed on this request (a bug; see its log)"),
}


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        if code not in CODES:  # every code is documented: serving/openapi.py lists CODES
            raise ValueError(f"undocumented error code {code!r}")
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status, headers=self.headers)
