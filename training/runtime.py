"""Device and precision choice, kept apart so the loop, the benchmark and export agree."""
from __future__ import annotations

import contextlib
import resource

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
