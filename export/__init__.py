"""Export stage: a checkpoint -> TorchScript + ONNX artifacts that carry their own preprocessing."""
from contract.stages import run_stage


def _load():
    from .cli import cli
    return cli


def command_line() -> None:
    """`cifar10-export`: the stage's command line, or one sentence when the light install lacks the stack."""
    run_stage("cifar10-export", "train", ("torch", "torchvision", "matplotlib", "onnx", "onnxruntime", "onnxscript"),
              _load)
