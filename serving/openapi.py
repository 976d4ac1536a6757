"""The service's HTTP API, described once: the OpenAPI 3 document at /docs.json (under the Swagger UI at /),
and the route list BentoML's own clients (bentoml.SyncHTTPClient / AsyncHTTPClient) build their methods
from at /schema.json. Error codes come from serving/errors.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

from contract.constants import MAX_BATCH_IMAGES

from .errors import CODES

TITLE = "cifar10-service"
VERSION = "1"

SCORE = {"type": "object", "required": ["label", "index", "probability"], "properties": {
    "label": {"type": "string", "example": "cat"}, "index": {"type": "integer", "example": 3},
    "probability": {"type": "number", "format": "float", "example": 0.71}}}
MODEL_REF = {"type": "object", "description": "the model version and runtime that answered", "properties": {
    "name": {"type": "string", "example": "cifar10-simplecnn"}, "version": {"type": "string"},
    "runtime": {"type": "string", "example": "onnx"}, "device": {"type": "string", "example": "cpu"}}}
PREDICTION = {"type": "object", "required": ["label", "index", "confidence", "top_k", "ood_score", "in_distribution",
                                            "model"], "properties": {
    "label": {"type": "string", "description": "the top class", "example": "cat"},
    "index": {"type": "integer", "example": 3},
    "confidence": {"type": "number", "format": "float", "description": "its probability (calibrated when the "
                   "export fitted a temperature)", "example": 0.71},
    "top_k": {"type": "array", "items": {"$ref": "#/components/schemas/Score"}},
    "ood_score": {"type": "number", "format": "float", "nullable": True,
                  "description": "out-of-distribution score: higher is less like the training images (null for a "
                  "model exported without it)", "example": 0.12},
    "in_distribution": {"type": "boolean", "nullable": True,
                        "description": "false: probably not one of the classes (ood_score above the model's "
                        "threshold, which passes 95% of held-out CIFAR-10 images); null for a model exported "
                        "without the score", "example": True},
    "model": {"$ref": "#/components/schemas/ModelRef"}}}
ERROR = {"type": "object", "required": ["error", "code"], "properties": {
    "error": {"type": "string", "description": "one sentence for people"},
    "code": {"type": "string", "enum": sorted(CODES), "description": "stable, for programs"}}}
MODEL_INFO = {"type": "object", "description": "classes, input spec, normalization, metrics, provenance, serving "
              "settings", "additionalProperties": True, "properties": {
                  "model": {"$ref": "#/components/schemas/ModelRef"}, "tag": {"type": "string"},
                  "classes": {"type": "array", "items": {"type": "string"}},
                  "architecture": {"type": "string", "example": "SimpleCNN"},
                  "members": {"type": "array", "nullable": True, "items": {"type": "object"},
                              "description": "an ensemble's members (network, checkpoint sha256, temperature, "
                              "accuracy); null for a single network"}}}
TOP_K = {"type": "integer", "minimum": 1, "default": 3, "description": "classes to return (1 to the class count)"}
BASE64 = {"type": "string", "format": "byte", "description": "the image file's bytes, base64 (a data: URL works too)"}
TARGET = {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
          "description": "the class to explain: a name or an index (default: the top class)"}
EXPLANATION = {"allOf": [{"$ref": "#/components/schemas/Prediction"}, {"type": "object", "properties": {
    "target": {"$ref": "#/components/schemas/Score"},
    "heatmap": {"type": "array", "description": "32 rows of 32 values in [0, 1], row-major",
                "items": {"type": "array", "items": {"type": "number"}}},
    "overlay": {"type": "string", "description": "data:image/png;base64,... (the heatmap over the image)"},
    "explanation": {"type": "object", "description": "method and explained layer"}}}]}
SCHEMAS = {"Score": SCORE, "ModelRef": MODEL_REF, "Prediction": PREDICTION, "Error": ERROR, "ModelInfo": MODEL_INFO,
           "Explanation": EXPLANATION}


@dataclass(frozen=True)
class Endpoint:
    """One route: what OpenAPI says about it, and (when `client` is set) how BentoML's client calls it."""

    path: str
    methods: tuple[str, ...]
    summary: str
    description: str = ""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # content type -> {schema, example}
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # status -> OpenAPI response
    errors: tuple[str, ...] = ()
    query: tuple[dict[str, Any], ...] = ()
    client: Optional[dict[str, Any]] = None  # /schema.json route: name, input and output JSON schemas
    tag: str = "model"


def _json(ref: str) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


IMAGE_ERRORS = ("not_an_image", "corrupt_image", "empty_file", "missing_field", "not_a_file", "invalid_top_k",
                "malformed_multipart", "malformed_json", "invalid_base64", "unknown_field", "client_disconnected",
                "payload_too_large", "image_too_large", "unsupported_media_type", "unauthorized", "timeout",
                "internal_error")
CLIENT_IMAGE = {"type": "file", "format": "image"}
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/classify", ("post", "put"), "Classify one image",
        "The top class, its confidence and the top-k classes of one image. Any image file works (JPEG, PNG, "
        "WebP, GIF, BMP, TIFF, any size: resized to the model's input). Send it as multipart/form-data (the "
        "default), as the raw body, or as JSON with base64.",
        requests={
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}, "top_k": TOP_K}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                            "properties": {"image": BASE64, "top_k": TOP_K}},
                                 "example": {"image": "iVBORw0KGgo...", "top_k": 3}},
        },
        query=({"name": "top_k", "in": "query", "required": False, "schema": TOP_K,
                "description": "with a raw image body only (multipart and JSON carry top_k in the body)"},),
        responses={"200": _json("Prediction")}, errors=IMAGE_ERRORS + ("too_many_images",),
        client={"name": "classify", "input": {"type": "object", "required": ["image"], "properties": {
            "image": CLIENT_IMAGE, "top_k": {"type": "integer", "default": 3}}},
            "output": {"type": "object"}},
    ),
    Endpoint(
        "/classify_batch", ("post",), "Classify up to 64 images",
        f"One answer per image, in request order (at most {MAX_BATCH_IMAGES} images; the upload limit is 4x "
        "that of /classify). Multipart `images` parts or JSON {\"images\": [...]}.",
        requests={
            "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}}, "top_k": TOP_K}}},
            "application/json": {"schema": {"type": "object", "required": ["images"], "additionalProperties": False,
                                            "properties": {"images": {"type": "array", "items": BASE64,
                                                                      "maxItems": MAX_BATCH_IMAGES},
                                                           "top_k": TOP_K}}},
        },
        responses={"200": {"description": "OK", "content": {"application/json": {"schema": {
            "type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}}}},
        errors=IMAGE_ERRORS + ("too_many_images",),
        client={"name": "classify_batch", "input": {"type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": CLIENT_IMAGE}, "top_k": {"type": "integer", "default": 3}}},
            "output": {"type": "array", "items": {"type": "object"}}},
    ),
    Endpoint(
        "/explain", ("post",), "Explain one image (Grad-CAM)",
        "Where the network looked: a Grad-CAM heatmap (32x32 on the model's input grid, values in [0, 1]) for the "
        "top class or a chosen `target` (a class name or index), the overlay as a PNG data URL, and the "
        "classification itself. With `Accept: image/png` the answer is the overlay PNG alone. The same encodings, "
        "limits and refusals as /classify, plus `invalid_target`.",
        requests={
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}, "top_k": TOP_K, "target": TARGET}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                            "properties": {"image": BASE64, "top_k": TOP_K, "target": TARGET}},
                                 "example": {"image": "iVBORw0KGgo...", "target": "ship"}},
        },
        query=({"name": "top_k", "in": "query", "required": False, "schema": TOP_K,
                "description": "with a raw image body only"},
               {"name": "target", "in": "query", "required": False, "schema": TARGET,
                "description": "with a raw image body only"}),
        responses={"200": {"description": "OK", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Explanation"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}}}}},
        errors=IMAGE_ERRORS + ("too_many_images", "invalid_target"),
        client={"name": "explain", "input": {"type": "object", "required": ["image"], "properties": {
            "image": CLIENT_IMAGE, "target": {"type": "string"}, "top_k": {"type": "integer", "default": 3}}},
            "output": {"type": "object"}},
    ),
    Endpoint(
        "/model_info", ("get", "post"), "The served model",
        "Classes in index order, input spec, normalization and test-time augmentation, metrics at export, "
        "provenance (checkpoint sha256, git commit) and the serving settings.",
        responses={"200": _json("ModelInfo")}, errors=("unauthorized", "internal_error"),
        client={"name": "model_info", "input": {"type": "object", "properties": {}}, "output": {"type": "object"}},
    ),
    Endpoint("/ui", ("get",), "Web page: drop images, see the top classes",
             responses={"200": {"description": "HTML", "content": {"text/html": {}}}}, tag="pages"),
    Endpoint("/", ("get",), "This API documentation (Swagger UI)",
             responses={"200": {"description": "HTML", "content": {"text/html": {}}}}, tag="pages"),
    Endpoint("/docs.json", ("get",), "The OpenAPI 3 document of this API",
             responses={"200": {"description": "OpenAPI 3", "content": {"application/json": {}}}}, tag="pages"),
    Endpoint("/schema.json", ("get",), "Routes for BentoML's clients (bentoml.SyncHTTPClient)",
             responses={"200": {"description": "BentoML's service schema", "content": {"application/json": {}}}},
             tag="pages"),
    Endpoint("/readyz", ("get",), "Ready to answer: 200 once the model is loaded and warmed up; 503 while starting "
             "and from the moment a shutdown begins", responses={"200": {"description": "ready"},
                                                                 "503": {"description": "not ready"}}, tag="health"),
    Endpoint("/livez", ("get",), "The process is alive", responses={"200": {"description": "alive"}}, tag="health"),
    Endpoint("/metrics", ("get",), "Prometheus metrics (BentoML's request metrics, cifar10_predictions_total)",
             responses={"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
             tag="health"),
)


def _operation(ep: Endpoint, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag],
                          "operationId": f"{method}_{ep.path.strip('/').replace('.', '_') or 'index'}"}
    if ep.description:
        op["description"] = ep.description
    if ep.requests and method in ("post", "put"):
        content = copy.deepcopy(ep.requests)
        if method == "put":  # curl -T: the raw body only
            content = {k: v for k, v in content.items() if k in ("image/*", "application/octet-stream")}
        op["requestBody"] = {"required": True, "content": content}
    if ep.query and method in ("post", "put"):
        op["parameters"] = [copy.deepcopy(q) for q in ep.query]
    responses = copy.deepcopy(ep.responses)
    by_status: dict[int, list[str]] = {}
    for code in ep.errors:
        by_status.setdefault(CODES[code][0], []).append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "; ".join(f"`{c}`: {CODES[c][1]}" for c in codes),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"},
                                             "example": {"error": CODES[codes[0]][1], "code": codes[0]}}}}
    op["responses"] = responses
    if "unauthorized" in ep.errors:  # only when the deployment sets CIFAR10_API_KEYS ({}: no key is fine too)
        op["security"] = [{}, {"apiKey": []}]
    return op


def document(model: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document; `model` (classes, tag, architecture) adds what is being served."""
    served = ""
    if model:
        served = (f" Serving {model['tag']} ({model['architecture']}), classes in index order: "
                  f"{', '.join(model['classes'])}.")
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": TITLE, "version": VERSION, "description": (
            "Classify images with a network trained on CIFAR-10. Every refusal is a 4xx with "
            "{\"error\": \"<sentence>\", \"code\": \"<stable code>\"}; the codes are listed per endpoint. "
            "A web page to try it: [/ui](/ui)." + served)},
        "tags": [{"name": "model", "description": "classification"}, {"name": "pages", "description": "pages"},
                 {"name": "health", "description": "probes and metrics"}],
        "paths": {},
        "components": {"schemas": copy.deepcopy(SCHEMAS), "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "needed only where the deployment sets CIFAR10_API_KEYS: 'Authorization: Bearer <key>'"}}},
    }
    for ep in ENDPOINTS:
        doc["paths"][ep.path] = {m: _operation(ep, m) for m in ep.methods}
    return doc


def client_routes() -> list[dict[str, Any]]:
    """Route entries for /schema.json, in the shape BentoML's clients read (name, route, input, output)."""
    return [{"name": ep.client["name"], "route": ep.path, "description": ep.summary, "batchable": False,
             "input": copy.deepcopy(ep.client["input"]), "output": copy.deepcopy(ep.client["output"])}
            for ep in ENDPOINTS if ep.client]
