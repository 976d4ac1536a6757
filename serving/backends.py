"""Inference runtimes: ONNX Runtime (default; never imports torch) on CPU or CUDA, its int8 model on the CPU,
or TorchScript. The classifier's backend and the explanation graph (serving/explain.py) are opened here.

A backend maps uint8 [N, 32, 32, 3] RGB to (probabilities float32 [N, C], ood_score float32 [N]); normalization is
in the graph, and so is the out-of-distribution score (export/ood.py). A graph exported before the score existed
has no ood_score output: its backend gives None in its place, and the answers say in_distribution null.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from contract.onnx_session import onnx_session

from .config import DEVICES, RUNTIMES, SettingsError, choice

log = logging.getLogger("bentoml.cifar10_service")


def open_onnx(path: Path, device: str, threads: int):
    """(session, the device it really runs on) for an exported ONNX graph; device is auto, cpu or cuda."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device in ("auto", "cuda")
    providers = (["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else [])
    providers.append("CPUExecutionProvider")
    if device == "cuda" and providers[0] != "CUDAExecutionProvider":
        raise SettingsError("CIFAR10_DEVICE=cuda, but onnxruntime has no CUDAExecutionProvider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu")
    session = onnx_session(str(path), threads, providers, spinning=False)
    # ONNX Runtime silently falls back to CPU when CUDA cannot start: report what it really uses.
    actual = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    if device == "cuda" and actual != "cuda":
        raise SettingsError("CIFAR10_DEVICE=cuda, but ONNX Runtime could not start CUDA")
    return session, actual


class TorchScriptGraph:
    """An exported TorchScript file on a device: numpy arrays in, numpy arrays out. The only place the service
    imports torch (the ONNX path, the CPU bento, has none installed)."""

    def __init__(self, path: Path, device: str, threads: Optional[int] = None):
        import torch

        cuda = torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise SettingsError("CIFAR10_DEVICE=cuda, but torch sees no usable CUDA device")
        self.device = "cuda" if device in ("auto", "cuda") and cuda else "cpu"
        if self.device == "cuda":
            _ieee_fp32(torch)
        if threads is not None:  # process-wide: set by the classifier's backend only
            torch.set_num_threads(threads)
        self.torch = torch
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        torch = self.torch
        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays))
            return tuple(o.float().cpu().numpy() for o in outputs)


Outputs = tuple[np.ndarray, Optional[np.ndarray]]  # probabilities [N, C], ood_score [N] or None


class OnnxBackend:
    runtime = "onnx"
    filename = "model.onnx"

    def __init__(self, model_dir: Path, device: str, threads: int):
        if not (model_dir / self.filename).is_file():
            raise SettingsError(f"CIFAR10_RUNTIME={self.runtime}, but the model has no {self.filename} "
                                "(export it again without --no-int8)")
        self.session, self.device = open_onnx(model_dir / self.filename, device, threads)
        self.outputs = ["probabilities"] + [o.name for o in self.session.get_outputs() if o.name == "ood_score"]

    def __call__(self, images: np.ndarray) -> Outputs:
        out = self.session.run(self.outputs, {"image": images})
        return out[0], (out[1] if len(out) > 1 else None)


class OnnxInt8Backend(OnnxBackend):
    """model.int8.onnx (export/quantize.py): int8 convolutions on the CPU."""

    runtime = "onnx-int8"
    filename = "model.int8.onnx"

    def __init__(self, model_dir: Path, device: str, threads: int):
        if device == "cuda":
            raise SettingsError("CIFAR10_RUNTIME=onnx-int8 runs on the CPU; use onnx (or torchscript) on CUDA")
        super().__init__(model_dir, "cpu", threads)


class TorchScriptBackend:
    runtime = "torchscript"

    def __init__(self, model_dir: Path, device: str, threads: int):
        self.graph = TorchScriptGraph(model_dir / "model.ts", device, threads)
        self.device = self.graph.device

    def __call__(self, images: np.ndarray) -> Outputs:
        out = self.graph(images)  # logits, probabilities[, ood_score]
        return out[1], (out[2] if len(out) > 2 else None)


def _ieee_fp32(torch) -> None:
    """CUDA runs fp32 convolutions in TF32 by default: measured on an H200, that moved probabilities by up to
    0.0024 against the CPU and changed 1 top-1 answer in 10,000 test images. The exported graph's contract is
    fp32 (parity <= 1e-4 at export), so this worker computes it in IEEE fp32."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def load_backend(model_dir: Path, runtime: str, device: str, threads: int):
    choice("CIFAR10_RUNTIME", runtime, RUNTIMES)
    choice("CIFAR10_DEVICE", device, DEVICES)
    cls = {"onnx": OnnxBackend, "onnx-int8": OnnxInt8Backend, "torchscript": TorchScriptBackend}[runtime]
    backend = cls(model_dir, device, threads)
    log.info("runtime %s on %s (asked: %s), %d intra-op thread(s)", backend.runtime, backend.device, device, threads)
    return backend
