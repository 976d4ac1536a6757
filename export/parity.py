"""Eager vs TorchScript vs ONNX Runtime on the same real images: the export's acceptance test."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from contract.onnx_session import onnx_session

# uint8 [N,32,32,3] -> (logits [N, C], probs [N, C]), and ood_score [N] from a graph that has it
Runner = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def chunked(run: Runner, batch: int) -> Runner:
    """`run` over `batch` images at a time, its outputs concatenated: what a call costs in memory stays that of
    one batch whatever the caller passes (export.wrapper.images_per_call sizes it)."""
    def over(images: np.ndarray):
        parts = [run(images[i:i + batch]) for i in range(0, len(images), batch)]
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    return over


def torch_runner(module: torch.nn.Module, batch: int = 500) -> Runner:
    @torch.no_grad()
    def run(images: np.ndarray):
        return tuple(o.numpy() for o in module(torch.from_numpy(images)))
    return chunked(run, batch)


def onnx_runner(path: str, threads: int = 0, batch: int = 500) -> Runner:
    session = onnx_session(path, threads)
    names = [o.name for o in session.get_outputs()]  # logits, probabilities[, ood_score]

    def run(images: np.ndarray):
        return tuple(session.run(names, {"image": images}))
    return chunked(run, batch)


def run_explain(path: str, images: np.ndarray, batch_size: int = 250,
                threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps, probabilities) of explain.onnx for the top class of every image."""
    session = onnx_session(path, threads)
    heat, probs = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        h, p = session.run(["heatmap", "probabilities"], {"image": chunk, "target": np.full(len(chunk), -1, np.int64)})
        heat.append(h)
        probs.append(p)
    return np.concatenate(heat), np.concatenate(probs)


def compare(images: np.ndarray, labels: np.ndarray, runners: dict[str, Runner],
            reference: str = "eager") -> dict[str, Any]:
    """Per runner: accuracy; per non-reference runner: max |Δlogit|, max |Δprob|, top-1 agreement."""
    outputs: dict[str, tuple[np.ndarray, ...]] = {}
    for name, run in runners.items():
        outputs[name] = run(images)  # each runner takes its own batches
    ref = outputs[reference]
    report: dict[str, Any] = {"images": int(len(images)), "reference": reference, "artifacts": {}}
    for name, out in outputs.items():
        logits, probs = out[0], out[1]
        entry = {"accuracy": float((logits.argmax(1) == labels).mean()),
                 # argmax of NaN is 0 in every runtime: NaN outputs would "agree" and pass every comparison.
                 "non_finite_outputs": int(sum((~np.isfinite(o)).sum() for o in out))}
        if name != reference:
            entry.update({
                "max_abs_logit_diff": float(np.abs(logits - ref[0]).max()),
                "max_abs_prob_diff": float(np.abs(probs - ref[1]).max()),
                "top1_agreement": float((logits.argmax(1) == ref[0].argmax(1)).mean()),
                "prob_sum_max_error": float(np.abs(probs.sum(1) - 1).max()),
            })
            if len(out) > 2 and len(ref) > 2:
                # The score is a sum of squared distances: its error grows with its size, so it is compared
                # relative to it (|Δ| / max(1, |score|)).
                entry["max_rel_ood_diff"] = float((np.abs(out[2] - ref[2]) / np.maximum(1.0, np.abs(ref[2]))).max())
        report["artifacts"][name] = entry
    return report


def failures(report: dict[str, Any], tolerance: float) -> list[str]:
    out = []
    for name, entry in report["artifacts"].items():
        if entry["non_finite_outputs"]:
            out.append(f"{name}: {entry['non_finite_outputs']} NaN or infinite outputs (a diverged checkpoint?)")
        if name == report["reference"]:
            continue
        if not entry["max_abs_logit_diff"] <= tolerance:  # written so that NaN fails
            out.append(f"{name}: max |Δlogit| {entry['max_abs_logit_diff']:.2e} > {tolerance:.0e}")
        if "max_rel_ood_diff" in entry and not entry["max_rel_ood_diff"] <= tolerance:
            out.append(f"{name}: ood_score differs by {entry['max_rel_ood_diff']:.2e} (relative) > {tolerance:.0e}")
        if entry["top1_agreement"] < 1.0:
            out.append(f"{name}: top-1 disagrees on {round((1 - entry['top1_agreement']) * report['images'])} images")
    return out


def explain_report(heat: np.ndarray, reference: np.ndarray, probs: np.ndarray, classifier_probs: np.ndarray,
                   layer: str, method: str, kinks: np.ndarray) -> dict[str, Any]:
    """The explanation graph against the torch autograd reference (heatmaps) and the classifier (probabilities).
    `max_abs_heatmap_diff` leaves out the images at a ReLU kink (bool [N], export/explain.py `at_kink`), where
    the gradient is undefined; `max_abs_heatmap_diff_all` is over every image."""
    diff = np.abs(heat - reference).reshape(len(heat), -1).max(1)  # [N]
    return {"images": int(len(heat)), "layer": layer, "method": method,
            "reference": f"torch autograd {method} of the checkpoint",
            "images_at_relu_kink": int(kinks.sum()), "compared_images": int((~kinks).sum()),
            "max_abs_heatmap_diff": float(diff[~kinks].max()), "max_abs_heatmap_diff_all": float(diff.max()),
            "max_abs_prob_diff": float(np.abs(probs - classifier_probs).max()),
            "heatmap_range": [float(heat.min()), float(heat.max())]}
