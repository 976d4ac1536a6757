"""Training stage: SimpleCNN on CIFAR-10 (python -m training --help)."""
import sys

STACK = ("torch", "torchvision", "matplotlib")


def command_line() -> None:
    """`cifar10-train`: the stage's command line, or one sentence when the light install lacks the stack."""
    try:
        from .cli import cli as run
    except ModuleNotFoundError as exc:
        if exc.name not in STACK:
            raise
        sys.exit(f"error: cifar10-train needs {exc.name}, which this install lacks: "
                 "pip install 'cifar10-service[train]'")
    run()
