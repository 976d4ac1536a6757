"""What a batch job scores: an ImageFolder split, a flat folder of images, or a Parquet table of paths or bytes.

Folders are listed here, on the driver (one row per file: its path, and its class for an ImageFolder); the
workers read the files. A Parquet table is read by the engine itself, in parallel, with the columns renamed to
the Scorer's (path, image, true_label).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from contract.folders import FolderError, list_image_folder
from contract.images import IMAGE_EXTENSIONS


class InputError(Exception):
    """The input cannot be scored as given (one sentence, exit code 2)."""


@dataclass
class Source:
    kind: str  # "imagefolder", "folder" or "parquet"
    location: Path
    rows: list[tuple[str, Optional[str]]] = field(default_factory=list)  # folders: (path, true class or None)
    columns: dict[str, str] = field(default_factory=dict)  # parquet: table column -> Scorer column
    labelled: bool = False


def open_source(location: Path, classes: list[str], path_column: str = "path", image_column: str = "image",
                label_column: str = "true_label") -> Source:
    if not location.exists():
        raise InputError(f"{location} does not exist")
    if location.is_dir():
        if any(p.suffix.lower() == ".parquet" for p in location.iterdir() if p.is_file()):
            return _parquet(location, classes, path_column, image_column, label_column)  # a table's folder
        return _folder(location, classes)
    if location.suffix.lower() == ".parquet":
        return _parquet(location, classes, path_column, image_column, label_column)
    raise InputError(f"{location} is neither a folder of images nor a .parquet table")


def _folder(location: Path, classes: list[str]) -> Source:
    subfolders = [d for d in location.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subfolders:
        try:
            names, samples = list_image_folder(location)
        except FolderError as exc:
            raise InputError(f"{exc}; an ImageFolder split has one sub-folder of images per class") from None
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise InputError(f"folder classes {unknown} are not among the model's classes {classes}")
        return Source("imagefolder", location, [(str(p), names[i]) for p, i in samples], labelled=True)
    files = sorted(p for p in location.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{location} holds no images (files ending in {', '.join(IMAGE_EXTENSIONS)}) and no "
                         "class folders")
    return Source("folder", location, [(str(p), None) for p in files])


def _parquet(location: Path, classes: list[str], path_column: str, image_column: str, label_column: str) -> Source:
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        schema = pads.dataset(str(location), format="parquet").schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{location} is not a readable Parquet table ({exc})") from None
    columns = {}
    if image_column in schema.names:
        if not (pa.types.is_binary(schema.field(image_column).type)
                or pa.types.is_large_binary(schema.field(image_column).type)):
            raise InputError(f"column {image_column!r} of {location} is {schema.field(image_column).type}, "
                             "not binary (the encoded image file's bytes)")
        columns[image_column] = "image"
    if path_column in schema.names:
        columns[path_column] = "path"
    if not columns:
        raise InputError(f"{location} has neither a {path_column!r} column (image paths) nor an {image_column!r} "
                         f"column (image bytes); its columns are {schema.names}")
    labelled = label_column in schema.names
    if labelled:
        columns[label_column] = "true_label"
        found = pads.dataset(str(location), format="parquet").to_table(columns=[label_column]).column(0)
        unknown = sorted(set(found.drop_null().unique().to_pylist()) - set(classes))
        if unknown:
            raise InputError(f"labels {unknown[:10]} in column {label_column!r} are not among the model's "
                             f"classes {classes}")
    return Source("parquet", location, columns=columns, labelled=labelled)
