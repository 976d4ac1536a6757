"""The ImageFolder layout, listed one way for every stage: <split>/<class>/<image>, classes in sorted order.
Training reads its splits with it, `cifar10-classify --eval` the folder it scores."""
from __future__ import annotations

from pathlib import Path

from .images import IMAGE_EXTENSIONS


class FolderError(Exception):
    """The folder is not an ImageFolder split (one sentence, for the user)."""


def list_image_folder(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image, class index)]) of one split. Every sub-folder not starting with "." is a class and
    must hold at least one image (a file with an image extension); files beside the class folders are ignored."""
    if not folder.is_dir():
        raise FolderError(f"{folder} is missing")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FolderError(f"{folder} has no class folders")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FolderError(f"class folder {folder / name} has no images")
        samples.extend((p, index) for p in files)
    return classes, samples
