"""The two hand-offs between stages, as typed and versioned records.

- `Checkpoint`: what the training stage writes (best.pt, last.pt) and export, resume and evaluation read.
  Its tensors (weights, optimizer state) stay opaque here; training/checkpoint.py turns the record into a
  file with torch.save and back with torch.load(weights_only=True), so this module needs no torch.
- `ModelMetadata`: metadata.json beside the exported graphs, written by the export stage and read by the
  service. Everything the service needs to know about the model is here or inside the graph.

Each record has one writer (`to_dict`/`write`) and one reader (`from_dict`/`read`); a file of another
format version, or one missing a field, is refused with one sentence that says what to do.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CHECKPOINT_FORMAT = 2
METADATA_FORMAT = 2
CHECKPOINT_KIND = "cifar10-service checkpoint"


class SchemaError(ValueError):
    """A hand-off file that this version cannot read; the message is one sentence for the user."""


def _fields(cls) -> tuple[set[str], set[str]]:
    """(all field names, names without a default) of a dataclass."""
    names, required = set(), set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    return names, required


def _shallow(record) -> dict[str, Any]:
    # Not dataclasses.asdict: that deep-copies every tensor of the weights and optimizer state.
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _check_keys(cls, values: dict[str, Any], what: str) -> None:
    names, required = _fields(cls)
    missing = sorted(required - values.keys())
    if missing:
        raise SchemaError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(values.keys() - names)
    if unknown:
        raise SchemaError(f"{what} has unknown field(s) {', '.join(unknown)}")


@dataclass(frozen=True)
class Normalization:
    """How uint8 pixels become the network's input: (x / 255 - mean) / std on input_size x input_size RGB."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Normalization":
        return cls(tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]),
                   int(values["input_size"]))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.input_size}


@dataclass
class ResumeState:
    """What last.pt adds to a checkpoint so that an interrupted run continues exactly (tensors opaque here)."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any]
    best_model: Optional[dict[str, Any]]
    train_seconds: float
    rng: dict[str, Any]
    scaler: Optional[dict[str, Any]] = None
    ema: Optional[dict[str, Any]] = None


@dataclass
class Checkpoint:
    """A training checkpoint: the weights and everything needed to rebuild, evaluate or resume them."""

    arch: str  # the network's name in training/models (e.g. "simplecnn")
    model_args: dict[str, Any]  # keyword arguments that rebuild the network
    config: dict[str, Any]  # the whole TrainConfig of the run
    classes: list[str]
    normalization: Normalization
    provenance: dict[str, Any]  # git commit, torch version, dataset, processes, teacher, ...
    model: dict[str, Any]  # state dict
    epoch: int
    metrics: Optional[dict[str, Any]] = None  # best.pt: validation (and, once finished, test) figures
    summary: Optional[dict[str, Any]] = None  # best.pt of a finished run: the results.md figures
    resume: Optional[ResumeState] = None  # last.pt only

    def to_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only, so that torch.load(weights_only=True) reads it back."""
        out = {"format_version": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, **_shallow(self)}
        out["normalization"] = self.normalization.to_dict()
        if self.resume is not None:
            out["resume"] = _shallow(self.resume)
        return out

    @classmethod
    def from_dict(cls, values: Any, source: str = "checkpoint") -> "Checkpoint":
        if not isinstance(values, dict) or values.get("kind") != CHECKPOINT_KIND:
            raise SchemaError(f"{source} is not a cifar10-service checkpoint")
        version = values.get("format_version")
        if version != CHECKPOINT_FORMAT:
            raise SchemaError(f"{source} is a format {version} checkpoint and this version reads format "
                              f"{CHECKPOINT_FORMAT}; train it again with this version (python -m training)")
        body = {k: v for k, v in values.items() if k not in ("format_version", "kind")}
        _check_keys(cls, body, source)
        try:
            body["normalization"] = Normalization.from_dict(body["normalization"])
            if body.get("resume") is not None:
                _check_keys(ResumeState, body["resume"], f"{source}'s resume state")
                body["resume"] = ResumeState(**body["resume"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{source} has a malformed field ({exc})") from None
        return cls(**body)


@dataclass
class ModelMetadata:
    """metadata.json: what the exported graphs are, what they expect, and where they came from."""

    model_name: str
    architecture: str
    classes: list[str]
    input: dict[str, Any]  # name, dtype, shape [-1, size, size, 3], layout, color, preprocessing
    outputs: dict[str, str]
    normalization: dict[str, Any]  # mean, std (applied inside the graph)
    tta_flip: bool
    training_config: dict[str, Any]
    metrics: dict[str, Any]
    source_checkpoint: dict[str, Any]  # path, sha256
    versions: dict[str, Any]
    exported_at: str
    files: dict[str, str]  # artifact file name -> sha256
    tta_translate: int = 0  # pixels of the shifted test-time views inside the graph (0: none)
    dataset: Optional[dict[str, Any]] = None
    git_commit: Optional[str] = None  # of the training run
    export_git_commit: Optional[str] = None
    # Temperature scaling fitted at export: temperature, ECE / NLL / accuracy before and after, on which images.
    calibration: Optional[dict[str, Any]] = None
    # The Grad-CAM graph (explain.onnx / explain.ts): the explained layer, the file names.
    explanation: Optional[dict[str, Any]] = None
    # model.int8.onnx, when exported: accuracy and agreement against fp32.
    int8: Optional[dict[str, Any]] = None
    # The out-of-distribution score the graphs output (export/ood.py): its threshold, on which images it was fit,
    # the false-rejection rate. None for an export made before it existed: the service answers in_distribution null.
    ood: Optional[dict[str, Any]] = None
    # Serving defaults measured for this network (e.g. max_batch); CIFAR10_* settings override them.
    serving: dict[str, Any] = field(default_factory=dict)
    # An ensemble's members (export/ensemble.py): each one's network, checkpoint path and sha256, temperature,
    # accuracy. None for a single network.
    members: Optional[list[dict[str, Any]]] = None

    @property
    def input_size(self) -> int:
        return int(self.input["shape"][1])

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": METADATA_FORMAT, **dataclasses.asdict(self)}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: Any, source: str = "metadata.json") -> "ModelMetadata":
        if not isinstance(values, dict):
            raise SchemaError(f"{source} is not a JSON object")
        version = values.get("format_version", 1)
        if version != METADATA_FORMAT:
            raise SchemaError(f"{source} is format {version} and this service reads format {METADATA_FORMAT}; "
                              "export the checkpoint again with this version (python -m export ... --bentoml)")
        body = {k: v for k, v in values.items() if k != "format_version"}
        _check_keys(cls, body, source)
        return cls(**body)

    @classmethod
    def read(cls, path: str | Path) -> "ModelMetadata":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SchemaError(f"{path} is not readable JSON ({exc})") from None
        return cls.from_dict(values, str(path))
