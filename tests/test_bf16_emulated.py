"""benchmarks/bf16_emulated.py: bf16 autocast's roundings in fp32 arithmetic (docs/experiments.md, issue 17)."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from conftest import make_image_folder, run_training

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bf16_emulated  # noqa: E402

from training.models.simplecnn import SimpleCNN  # noqa: E402


def _logits_and_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> torch.Tensor:
    """Logits and every parameter's gradient, flattened into one fp32 vector."""
    model.zero_grad(set_to_none=True)
    with ctx:
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    return torch.cat([logits.detach().float().flatten(), *(p.grad.flatten() for p in model.parameters())])


def test_the_emulation_is_much_closer_to_real_bf16_autocast_than_fp32_is():
    torch.manual_seed(0)
    model = SimpleCNN(dropout=0.0).train().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    fp32 = _logits_and_grads(model, x, y, contextlib.nullcontext())
    real = _logits_and_grads(model, x, y, torch.autocast("cpu", dtype=torch.bfloat16))
    mode = bf16_emulated.EmulatedBf16()
    emulated = _logits_and_grads(model, x, y, mode)
    assert mode.calls == 8  # 3 conv, 3 batch_norm, 2 linear
    assert (fp32 - real).norm() > 0  # bf16 changes the numbers, so the comparison below means something
    # Measured: 0.055 (the kernels' summation order still differs); fp32 sits at 1 by definition.
    assert (emulated - real).norm() < 0.2 * (fp32 - real).norm()


def _weights_after_adam_steps(ctx_factory, steps: int = 10, batch: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    model = SimpleCNN(dropout=0.0).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=g)
        with ctx_factory():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_emulation_stays_closer_to_real_bf16_than_fp32_over_adam_steps():
    fp32 = _weights_after_adam_steps(contextlib.nullcontext)
    real = _weights_after_adam_steps(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    emulated = _weights_after_adam_steps(bf16_emulated.EmulatedBf16)
    # Measured: 0.29 after 10 steps (0.40 after 30 at batch 64). Trajectories drift apart under any change of
    # numerics; most of it is the conv biases, whose gradient is zero under batch norm: Adam turns their
    # rounding noise, which differs between the two, into full-size steps.
    assert (emulated - real).norm() < 0.5 * (fp32 - real).norm()


def test_rounding_reaches_the_gradients_too():
    w = torch.tensor([1.0 + 2 ** -10], requires_grad=True)  # not a bf16 value (8 bits of mantissa)
    out = bf16_emulated._RoundBoth.apply(w)
    assert out.item() == 1.0
    out.backward(torch.tensor([1.0 + 2 ** -10]))
    assert w.grad.item() == 1.0


def test_a_run_trains_under_the_emulation_and_says_so(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=(8, 2))
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "8", "--seed", "3", "--quiet", "--deterministic"]
    assert bf16_emulated.main([*common, "--checkpoint-dir", str(tmp_path / "emu")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["precision"] == "bf16-emulated" and summary["rounded_calls"] > 0
    assert json.loads((tmp_path / "emu" / "bf16_emulation.json").read_text())["rounded_calls"] == summary[
        "rounded_calls"]
    assert len(json.loads((tmp_path / "emu" / "history.json").read_text())) == 1
    # The same run in plain fp32 ends with other weights: the rounding was in the loop, not only counted.
    assert run_training(*common, "--checkpoint-dir", str(tmp_path / "fp32")) == 0
    emu = torch.load(tmp_path / "emu" / "last.pt", weights_only=True)["model"]
    plain = torch.load(tmp_path / "fp32" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(emu[k], plain[k]) for k in plain)
    from training import engine, runtime
    assert engine.autocast is runtime.autocast  # put back after the run


def test_other_precisions_and_resumes_are_refused(tmp_path, capsys):
    assert bf16_emulated.main(["--precision", "bf16", "--checkpoint-dir", str(tmp_path)]) == 2
    assert bf16_emulated.main(["--resume", str(tmp_path / "last.pt")]) == 2
    assert capsys.readouterr().err.count("error: ") == 2
