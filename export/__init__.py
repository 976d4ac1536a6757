"""Export stage: a checkpoint -> TorchScript + ONNX artifacts that carry their own preprocessing."""
import sys

STACK = ("torch", "torchvision", "matplotlib", "onnx", "onnxruntime", "onnxscript")


def command_line() -> None:
    """`cifar10-export`: the stage's command line, or one sentence when the light install lacks the stack."""
    try:
        from .cli import cli as run
    except ModuleNotFoundError as exc:
        if exc.name not in STACK:
            raise
        sys.exit(f"error: cifar10-export needs {exc.name}, which this install lacks: "
                 "pip install 'cifar10-service[train]'")
    run()
