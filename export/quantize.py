"""model.int8.onnx: ONNX Runtime static quantization of model.onnx, with onnxruntime's own tooling.

quant_pre_process (shape inference and graph optimization) first, then quantize_static in QDQ format with
per-channel int8 weights and uint8 activations, calibrated (MinMax) on a seeded sample of training images,
never test images. Weights use 7 of their 8 bits (reduce_range): on x86 CPUs without VNNI (AVX2 only) ONNX
Runtime's uint8 x int8 kernels add pairs of products in int16, which saturates with full-range weights; on a
brief SimpleCNN that cost 1.9 points of accuracy (top-1 agreement with fp32 86.6%) against 0.2 (97.8%) with
reduce_range (docs/experiments.md). The input (uint8 NHWC images), the outputs (logits, probabilities), the
normalization, the test-time augmentation and the temperature all stay inside the graph, as in model.onnx.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

# Every operator type the QDQ quantizer supports, not only those with weights: int8 tensors then flow through
# ReLU/GELU, max-pooling and reshapes without a dequantize/quantize pair around each. Measured 2026-11-29
# (AVX2-only VM, 2 threads, batch 64, int8 / fp32 images/s): SimpleCNN `fast` 1.05-1.12x against 0.82x with
# Conv/MatMul/Gemm only, airbench 1.91x against 1.74x, accuracy within 0.1 point of either. Except Softmax:
# quantized, the served probabilities would move in steps of 1/255 and no longer sum to 1.
KEEP_FP32 = ("Softmax", "Cast", "QuantizeLinear", "DequantizeLinear")


def op_types(nodes) -> list[str]:
    """The operator types of the graph to quantize: all it has (quantize_static's own default) but KEEP_FP32."""
    return sorted({node.op_type for node in nodes} - set(KEEP_FP32))


class ImageBatches:
    """onnxruntime's CalibrationDataReader protocol over uint8 [N, H, W, 3] images, in batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 64):
        self.batches: Iterator[np.ndarray] = iter(images[i:i + batch_size] for i in range(0, len(images), batch_size))

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self.batches, None)
        return None if batch is None else {"image": batch}

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def preprocessing_nodes(nodes) -> list[str]:
    """The nodes before the first convolution (uint8 -> float, layout, normalization, TTA flips and shifts).
    In int8 they became QLinearMul/Sub pairs around the input: 15% of SimpleCNN's int8 time in ORT's profile
    (2026-11-29); left in fp32, SimpleCNN's int8 graph ran 1.09x fp32 instead of 0.94x (same run), airbench's
    the same (1.45x)."""
    # `nodes` are topologically sorted, as ONNX requires.
    first = next((i for i, node in enumerate(nodes) if node.op_type == "Conv"), 0)
    return [node.name for node in nodes[:first] if node.name]


def score_only_nodes(graph) -> list[str]:
    """The nodes that feed the ood_score output and neither logits nor probabilities (export/ood.py's statistics
    and distances). They stay fp32: a squared distance over hundreds of dimensions in 8 bits would move the score
    past its threshold, and they are a small share of the time."""
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(outputs: list[str]) -> set[int]:
        seen: set[int] = set()
        stack = [producer[o] for o in outputs if o in producer]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(producer[i] for i in node.input if i in producer)
        return seen

    names = [o.name for o in graph.output]
    if "ood_score" not in names:
        return []
    answer = ancestors([n for n in names if n != "ood_score"])
    return [node.name for node in graph.node if id(node) in ancestors(["ood_score"]) - answer and node.name]


def quantize(fp32_path: Path, int8_path: Path, calibration_images: np.ndarray) -> dict[str, object]:
    """Write int8_path from fp32_path; returns what was done (for metadata.json and the report)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Both tools log and print their progress; the export prints its own summary instead.
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                # ONNX Runtime's symbolic shape inference stops at the score's ReduceMin over classes (a None type;
                # onnxruntime 1.32); the graph's shapes are static but the batch, which ONNX's own inference handles.
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
                graph = onnx.load(str(prepared)).graph
                nodes = graph.node
                quantize_static(str(prepared), str(int8_path), ImageBatches(calibration_images),
                                nodes_to_exclude=preprocessing_nodes(nodes) + score_only_nodes(graph),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, op_types_to_quantize=op_types(nodes), reduce_range=True,
                                calibrate_method=CalibrationMethod.MinMax)
        finally:
            quiet.setLevel(level)
    return {"file": int8_path.name, "format": "QDQ", "weights": "int8 (7-bit range), per channel",
            "activations": "uint8",
            "calibration": f"MinMax on {len(calibration_images)} seeded training images",
            "quantized": "every operator after the first convolution but " + ", ".join(KEEP_FP32[:2])
                         + " and the out-of-distribution score's own (statistics, distances)"}


def count_ops(path: Path) -> dict[str, int]:
    """How many nodes of each type the graph has (QuantizeLinear/DequantizeLinear show it is quantized)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
