"""Writing the deployable graphs: TorchScript (torch.jit.script) and ONNX (the dynamo exporter), each carrying
the metadata, with a dynamic batch dimension."""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

from contract.schemas import ModelMetadata

from .metadata import onnx_metadata_props


def export_onnx(module: torch.nn.Module, path: Path, opset: int, meta: ModelMetadata, inputs: dict[str, torch.Tensor],
                outputs: list[str], doc: str) -> None:
    """module(*inputs.values()) -> outputs, every input batched along its first dimension."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter narrates each pass on stdout; the user gets our summary instead.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=outputs, dynamic_shapes={name: {0: batch} for name in inputs},
                          dynamo=True, external_data=False, opset_version=opset, verbose=False)
    model = onnx.load(str(path))
    model.doc_string = doc
    for key, value in onnx_metadata_props(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_torchscript(module: torch.nn.Module, path: Path, meta: ModelMetadata) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice; it is still what LibTorch loads
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path), _extra_files={"metadata.json": json.dumps(meta.to_dict())})


def load_torchscript(path: Path, map_location: str = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location=map_location)
