"""The do-it-yourself peer for benchmarks/serve_load.py: Starlette + uvicorn + onnxruntime, one process.

Same model file, same decoding (contract.images.decode), same JSON answer; no BentoML.
  CIFAR10_PEER_MODEL_DIR=<dir with model.onnx, metadata.json> uvicorn benchmarks.serve_peer:app --port N
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contract.images import ImageError, decode

MODEL_DIR = Path(os.environ["CIFAR10_PEER_MODEL_DIR"])
CLASSES = json.loads((MODEL_DIR / "metadata.json").read_text())["classes"]
_opts = ort.SessionOptions()
_opts.intra_op_num_threads = int(os.environ.get("CIFAR10_PEER_THREADS", "1"))
_opts.inter_op_num_threads = 1
SESSION = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), _opts, providers=["CPUExecutionProvider"])


async def classify(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "send a file under 'image'", "code": "missing_field"}, status_code=400)
    try:
        pixels = decode(await upload.read())
    except ImageError as exc:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=400)
    probs = SESSION.run(["probabilities"], {"image": pixels[None]})[0][0]
    order = np.argsort(-probs)[:3]
    best = int(order[0])
    return JSONResponse({
        "label": CLASSES[best], "index": best, "confidence": float(probs[best]),
        "top_k": [{"label": CLASSES[i], "index": int(i), "probability": float(probs[i])} for i in order],
        "model": {"name": "peer", "version": "0", "runtime": "onnx", "device": "cpu"},
    })


app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
