"""Swagger UI's files for the API documentation at /, as BentoML ships them (its own docs page uses the same):
read from inside the installed package, so the page needs nothing from the internet."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")
TYPES = {".css": "text/css", ".js": "text/javascript"}


def folder() -> Optional[Path]:
    """BentoML's static_content folder beside bentoml._internal.server, when it holds every file; else None."""
    try:
        from bentoml._internal import server
    except ImportError:
        return None
    found = Path(server.__file__).parent / "static_content"
    return found if all((found / f).is_file() for f in FILES) else None


def asset(name: str) -> Optional[tuple[bytes, str]]:
    """(content, media type) of one allow-listed file; None for any other name or when BentoML has none."""
    where = folder()
    if name not in FILES or where is None:
        return None
    return (where / name).read_bytes(), TYPES[Path(name).suffix]
