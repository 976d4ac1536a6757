"""The stages' console scripts (cifar10-train, cifar10-export) on the light client install: one sentence naming the
missing extra instead of an ImportError traceback. The stage is loaded by the caller's function, so this module
imports nothing of the project."""
from __future__ import annotations

import sys
from typing import Callable


def run_stage(command: str, extra: str, stack: tuple[str, ...], load: Callable[[], Callable[[], None]]) -> None:
    """Run the command line `load()` returns; exit with one sentence when it needs a package of `stack` that this
    install lacks."""
    try:
        run = load()
    except ModuleNotFoundError as exc:
        if exc.name not in stack:
            raise
        sys.exit(f"error: {command} needs {exc.name}, which this install lacks: pip install 'cifar10-service[{extra}]'")
    run()
