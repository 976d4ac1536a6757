"""Device and precision choice, kept apart so the loop, the benchmark and export agree."""
from __future__ import annotations

import contextlib
import os
import resource
from typing import Iterator

import torch

from .config import ConfigError, TrainConfig


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.use_cuda and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    # bf16 autocast on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated and slower
    # than fp32, so "auto" only picks it where the instructions exist.
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this precision on this device; None means plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if precision == "fp16":
        raise ConfigError("--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    if precision == "bf16" or cpu_supports_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def cuda_kernels(device: torch.device, deterministic: bool) -> Iterator[None]:
    """How CUDA picks its kernels inside the block, restored after it (settings are per process; tests and
    sweeps run several trainings in one). Deterministic: cuDNN's and cuBLAS's deterministic kernels, and torch
    warns about any op that has none. Otherwise cuDNN benchmarks the algorithms for each shape and keeps the
    fastest, as torchvision's reference trainer does. Nothing changes on the CPU, whose kernels are deterministic."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic:
        # cuBLAS reads it when its handle is made, i.e. at the first matrix product of the process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn.benchmark, cudnn.deterministic = False, True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        cudnn.benchmark, cudnn.deterministic = True, False
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """IEEE fp32 convolutions and matrix products inside the block. CUDA runs fp32 convolutions in TF32 (10-bit
    mantissa) by default, so without this an "fp32" evaluation there differs from the CPU's and the export's
    in the third digit, and argmax ties flip with the kernel picked. Training keeps torch's default."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        flags = [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        flags = [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved, strict=True):
            setattr(owner, name, value)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
