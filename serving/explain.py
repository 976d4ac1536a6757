"""Explanations: the exported Grad-CAM graph (explain.onnx, or explain.ts for the TorchScript runtime) and the
overlay PNG a person looks at. numpy and PIL only on the ONNX path.

The graph runs in its own single thread with one intra-op thread, so a burst of explanations (each heavier than
a classification) queues there instead of taking the cores /classify's batcher uses.
"""
from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

OVERLAY_SIZE = 160  # pixels on a side: 5x the 32x32 input, enough to see the heat
ALPHA = 0.5


def _colormap() -> np.ndarray:
    """A 256-entry blue -> cyan -> yellow -> red ramp (uint8 [256, 3]), like matplotlib's 'jet' without matplotlib."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], 1) * 255).round().astype(np.uint8)


COLORS = _colormap()


def overlay_png(pixels: np.ndarray, heat: np.ndarray, size: int = OVERLAY_SIZE) -> bytes:
    """The image (uint8 [H, W, 3]) upscaled, with the heatmap ([H, W] in [0, 1]) blended over it, as PNG bytes."""
    image = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    heat_up = np.asarray(Image.fromarray((heat * 255).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR))
    color = COLORS[heat_up].astype(np.float32)  # [size, size, 3]
    blended = ((1 - ALPHA) * image + ALPHA * color).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class ExplainRunner:
    """uint8 [N, H, W, 3] and target int64 [N] (-1: top class) -> (heatmap [N, H, W], probabilities [N, C],
    ood_score [N] or None for a graph exported without it)."""

    def __init__(self, model_dir: Path, runtime: str, device: str):
        from .backends import TorchScriptGraph, open_onnx

        self.runtime = runtime
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifar10-explain")
        if runtime == "torchscript":
            self._run = TorchScriptGraph(model_dir / "explain.ts", device)
        else:
            # "auto" on a CUDA worker: CUDA when it starts for this graph too, else the CPU (never a refusal to start)
            session, _ = open_onnx(model_dir / "explain.onnx", "auto" if device == "cuda" else device, threads=1)
            names = [o.name for o in session.get_outputs()]  # heatmap, probabilities[, ood_score]

            def run(images: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
                return tuple(session.run(names, {"image": images, "target": target}))
            self._run = run

    def __call__(self, images: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        out = self._run(images, target)
        return out[0], out[1], (out[2] if len(out) > 2 else None)

    def _explain_one(self, pixels: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, Optional[float], bytes]:
        heat, probs, ood = self(pixels[None], np.array([target], dtype=np.int64))
        return heat[0], probs[0], None if ood is None else float(ood[0]), overlay_png(pixels, heat[0])

    async def explain(self, pixels: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, Optional[float], bytes]:
        """(heatmap [H, W], probabilities [C], ood_score or None, overlay PNG) of one image. All of it runs in the
        explainer's thread: the overlay's resize and PNG encoding (about 10 ms) on the event loop would stall
        /classify."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._explain_one, pixels, target)
