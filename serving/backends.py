"""Inference runtimes: ONNX Runtime (default; never imports torch) on CPU or CUDA, its int8 model on the CPU,
or TorchScript.

A backend maps uint8 [N, 32, 32, 3] RGB to probabilities float32 [N, C]; normalization is in the graph.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("bentoml.cifar10_service")

RUNTIMES = ("onnx", "onnx-int8", "torchscript")
DEVICES = ("auto", "cpu", "cuda")


class ConfigurationError(ValueError):
    """A bad CIFAR10_* setting; the service refuses to start with this message."""


class OnnxBackend:
    runtime = "onnx"
    filename = "model.onnx"

    def __init__(self, model_dir: Path, device: str, threads: int):
        import onnxruntime as ort

        if not (model_dir / self.filename).is_file():
            raise ConfigurationError(f"CIFAR10_RUNTIME={self.runtime}, but the model has no {self.filename} "
                                     "(export it again without --no-int8)")
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda")
        providers = (["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else [])
        providers.append("CPUExecutionProvider")
        if device == "cuda" and providers[0] != "CUDAExecutionProvider":
            raise ConfigurationError("CIFAR10_DEVICE=cuda, but onnxruntime has no CUDAExecutionProvider "
                                     f"(available: {', '.join(available)}); install onnxruntime-gpu")
        opts = ort.SessionOptions()
        # ONNX Runtime sizes its pool from the machine, not from BentoML's worker count.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning idle threads would steal the CPU the event loop needs to parse the next request.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_dir / self.filename), opts, providers=providers)
        # ONNX Runtime silently falls back to CPU when CUDA cannot start: report what it really uses.
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise ConfigurationError("CIFAR10_DEVICE=cuda, but ONNX Runtime could not start CUDA")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"image": images})[0]


class OnnxInt8Backend(OnnxBackend):
    """model.int8.onnx (export/quantize.py): int8 convolutions on the CPU."""

    runtime = "onnx-int8"
    filename = "model.int8.onnx"

    def __init__(self, model_dir: Path, device: str, threads: int):
        if device == "cuda":
            raise ConfigurationError("CIFAR10_RUNTIME=onnx-int8 runs on the CPU; use onnx (or torchscript) on CUDA")
        super().__init__(model_dir, "cpu", threads)


class TorchScriptBackend:
    runtime = "torchscript"

    def __init__(self, model_dir: Path, device: str, threads: int):
        import torch

        cuda = torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise ConfigurationError("CIFAR10_DEVICE=cuda, but torch sees no usable CUDA device")
        self.device = "cuda" if device in ("auto", "cuda") and cuda else "cpu"
        if self.device == "cuda":
            _ieee_fp32(torch)
        torch.set_num_threads(threads)
        self.torch = torch
        self.module = torch.jit.load(str(model_dir / "model.ts"), map_location=self.device).eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(images).to(self.device, non_blocking=True)
            return self.module(x)[1].float().cpu().numpy()


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
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"CIFAR10_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if device not in DEVICES:
        raise ConfigurationError(f"CIFAR10_DEVICE must be one of {', '.join(DEVICES)}, got {device!r}")
    cls = {"onnx": OnnxBackend, "onnx-int8": OnnxInt8Backend, "torchscript": TorchScriptBackend}[runtime]
    backend = cls(model_dir, device, threads)
    log.info("runtime %s on %s (asked: %s), %d intra-op thread(s)", backend.runtime, backend.device, device, threads)
    return backend
