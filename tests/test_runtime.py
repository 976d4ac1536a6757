"""training/runtime.py's CUDA kernel settings: what they set inside their block and that they put it back.
The flags are process-wide and settable without a GPU, so the CUDA branch runs here on a CPU machine too."""
from __future__ import annotations

import torch

from training.runtime import cuda_kernels, full_fp32

CUDA = torch.device("cuda")


def _kernel_state() -> tuple:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled())


def test_deterministic_kernels_inside_the_block_and_the_old_settings_after():
    before = _kernel_state()
    with cuda_kernels(CUDA, deterministic=True):
        assert _kernel_state() == (False, True, True)
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # an op without one warns, never stops a run
    assert _kernel_state() == before
    with cuda_kernels(CUDA, deterministic=False):
        assert _kernel_state() == (True, False, False)  # cuDNN benchmarks its algorithms
    assert _kernel_state() == before


def test_settings_are_restored_when_the_block_raises():
    before = _kernel_state()
    try:
        with cuda_kernels(CUDA, deterministic=True):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert _kernel_state() == before


def test_nothing_changes_on_the_cpu():
    before = _kernel_state()
    with cuda_kernels(torch.device("cpu"), deterministic=True), full_fp32(torch.device("cpu")):
        assert _kernel_state() == before


def test_fp32_evaluation_turns_tf32_off_and_back():
    conv = torch.backends.cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with full_fp32(CUDA):
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


def test_the_serving_torchscript_runtime_on_cuda_asks_for_ieee_fp32():
    from serving.backends import _ieee_fp32

    conv = torch.backends.cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        _ieee_fp32(torch)
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    finally:
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
