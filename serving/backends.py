"""Inference runtimes: ONNX Runtime (default; never imports torch) or TorchScript, on CPU or CUDA.

A backend maps uint8 [N, 32, 32, 3] RGB to probabilities float32 [N, C]; normalization is in the graph.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("bentoml.cifar10_service")

RUNTIMES = ("onnx", "torchscript")
DEVICES = ("auto", "cpu", "cuda")


class ConfigurationError(ValueError):
    """A bad CIFAR10_* setting; the service refuses to start with this message."""


class OnnxBackend:
    runtime = "onnx"

    def __init__(self, model_dir: Path, device: str, threads: int):
        import onnxruntime as ort

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
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=providers)
        # ONNX Runtime silently falls back to CPU when CUDA cannot start: report what it really uses.
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise ConfigurationError("CIFAR10_DEVICE=cuda, but ONNX Runtime could not start CUDA")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"image": images})[0]


class TorchScriptBackend:
    runtime = "torchscript"

    def __init__(self, model_dir: Path, device: str, threads: int):
        import torch

        cuda = torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise ConfigurationError("CIFAR10_DEVICE=cuda, but torch sees no usable CUDA device")
        self.device = "cuda" if device in ("auto", "cuda") and cuda else "cpu"
        torch.set_num_threads(threads)
        self.torch = torch
        self.module = torch.jit.load(str(model_dir / "model.ts"), map_location=self.device).eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(images).to(self.device, non_blocking=True)
            return self.module(x)[1].float().cpu().numpy()


def load_backend(model_dir: Path, runtime: str, device: str, threads: int):
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"CIFAR10_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if device not in DEVICES:
        raise ConfigurationError(f"CIFAR10_DEVICE must be one of {', '.join(DEVICES)}, got {device!r}")
    cls = OnnxBackend if runtime == "onnx" else TorchScriptBackend
    backend = cls(model_dir, device, threads)
    log.info("runtime %s on %s (asked: %s), %d intra-op thread(s)", backend.runtime, backend.device, device, threads)
    return backend
