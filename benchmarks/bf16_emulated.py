"""`python -m training` with bf16 autocast's roundings emulated in fp32: what bf16 does to a recipe's accuracy,
measured on a CPU without native bf16, where real bf16 autocast runs about 10x slower than fp32.

  python benchmarks/bf16_emulated.py --seed 0 --checkpoint-dir runs/emu-s0 [any python -m training flag]

Every tensor that CPU bf16 autocast would hold in bf16 is rounded to the nearest bf16 value and kept in fp32:
conv2d's and linear's inputs, weights, biases and outputs, and batch_norm's output (autocast runs conv and
linear in bf16 and batch_norm in its input's dtype); the gradients flowing back through those points are
rounded the same way, as bf16 tensors' gradients are. ReLU, max-pooling, flatten and dropout (x2) are exact on
bf16 values, and the loss takes fp32 as under autocast. The products are still accumulated in fp32, as the
bf16 kernels do. What is not emulated: the kernels' own summation order, so single gradients differ from real
bf16 by about one bf16 rounding (tests/test_bf16_emulated.py checks the emulation is several times closer to real
bf16 autocast than fp32 is).

The run is an ordinary `python -m training` run (history.json, best.pt, ...) forced to `--precision fp32`
with the emulation on around every autocast region (the training step and evaluation); it writes
`bf16_emulation.json` beside them, because the checkpoint's own config says fp32. Prints the run's epochs as a
table and, last, one JSON object: best test accuracy and epoch, final train loss/accuracy, images/s, and how
many calls were rounded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]

# The functions nn.Conv2d / nn.Linear / nn.BatchNorm2d reach (F.* are Python wrappers of the torch.* ops).
LOWER_PRECISION = {torch.conv2d, F.conv2d, F.linear, torch._C._nn.linear}
INPUT_DTYPE = {F.batch_norm, torch.batch_norm}


def to_bf16_grid(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


class _RoundBoth(torch.autograd.Function):
    """Rounds a tensor to bf16 values on the way forward and its gradient on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return to_bf16_grid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return to_bf16_grid(grad)


def _round(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return _RoundBoth.apply(value)
    return value


class EmulatedBf16(TorchFunctionMode):
    """A function mode that rounds where CPU bf16 autocast holds bf16 (see the module docstring).

    Inside __torch_function__ the mode is off, so the wrapped call itself is not intercepted again."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LOWER_PRECISION:
            self.calls += 1
            args = tuple(_round(a) for a in args)
            kwargs = {k: _round(v) for k, v in kwargs.items()}
            return _round(func(*args, **kwargs))
        if func in INPUT_DTYPE:
            self.calls += 1
            return _round(func(*args, **kwargs))
        return func(*args, **kwargs)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from training import cli, engine
    from training.config import TrainConfig

    args = cli.get_args_parser().parse_args(argv)
    if getattr(args, "precision", "fp32") != "fp32":
        print("error: the emulation runs in fp32 and rounds like bf16; leave out --precision", file=sys.stderr)
        return 2
    if getattr(args, "eval_only", None) or getattr(args, "resume", None):
        print("error: run a fresh training (no --eval-only or --resume): the emulation is not in the checkpoint",
              file=sys.stderr)
        return 2
    args.precision = "fp32"
    mode = EmulatedBf16()
    real_autocast = engine.autocast

    def emulated_autocast(device, dtype):
        if dtype is not None:
            raise AssertionError("the emulation expects an fp32 run")
        return mode

    engine.autocast = emulated_autocast  # the loop's only precision hook (training.runtime.autocast)
    try:
        rc = cli.main(args)
    finally:
        engine.autocast = real_autocast
    if rc != 0:
        return rc
    out = Path(getattr(args, "checkpoint_dir", TrainConfig().checkpoint_dir))
    history = json.loads((out / "history.json").read_text())
    (out / "bf16_emulation.json").write_text(json.dumps({
        "emulated_precision": "bf16 (CPU autocast roundings, fp32 arithmetic)",
        "script": "benchmarks/bf16_emulated.py", "argv": argv, "rounded_calls": mode.calls}, indent=2) + "\n")

    print(f"\n{'epoch':>5} | {'train loss':>10} | {'train acc':>9} | {'test acc':>8} | {'img/s':>6}")
    for h in history:
        test = f"{100 * h['val_acc']:7.2f}%" if h.get("val_acc") is not None else "      -"
        print(f"{h['epoch']:>5} | {h['train_loss']:>10.4f} | {100 * h['train_acc']:>8.2f}% | {test} | "
              f"{h['img_s']:>6.0f}")
    validated = [h for h in history if h.get("val_acc") is not None]
    best = max(validated, key=lambda h: h["val_acc"]) if validated else None
    img_s = sorted(h["img_s"] for h in history)
    print(json.dumps({
        "seed": getattr(args, "seed", None), "precision": "bf16-emulated",
        "best_test_acc": best["val_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
        "final_train_loss": history[-1]["train_loss"], "final_train_acc": history[-1]["train_acc"],
        "median_img_s": img_s[len(img_s) // 2], "rounded_calls": mode.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
