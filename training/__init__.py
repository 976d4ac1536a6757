"""Training stage: SimpleCNN on CIFAR-10 (python -m training --help)."""
from contract.stages import run_stage


def _load():
    from .cli import cli
    return cli


def command_line() -> None:
    """`cifar10-train`: the stage's command line, or one sentence when the light install lacks the stack."""
    run_stage("cifar10-train", "train", ("torch", "torchvision", "matplotlib"), _load)
