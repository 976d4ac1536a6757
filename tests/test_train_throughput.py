"""benchmarks/train_throughput.py --profile: where the step's time goes, by kind of operator."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_throughput  # noqa: E402


@pytest.mark.parametrize("name, kind", [
    ("aten::mkldnn_convolution", "convolution forward"),
    ("aten::convolution_backward", "convolution backward"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution backward"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("aten::addmm", "linear / matmul"),
    ("aten::_fused_adam_", "optimizer"),
    ("aten::max_pool2d_with_indices_backward", "relu / max-pool"),
    ("aten::empty_strided", "other"),
])
def test_profiler_events_are_sorted_into_kinds(name, kind):
    assert train_throughput.op_kind(name) == kind


def test_the_profile_of_the_step_covers_its_convolutions():
    shares = train_throughput.profile_ceiling(8, 2, None, torch.device("cpu"))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution forward"] > 0 and shares["convolution backward"] > 0 and shares["batch norm"] > 0
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
