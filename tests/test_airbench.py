"""The airbench network through the chain: model, its recipe on real data, resume, export parity, the service,
and distillation into SimpleCNN."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, Server, cifar_test_images, interrupt_after, run_training
from training.checkpoint import load_checkpoint
from training.engine import tta_logits
from training.models import AirbenchNet

pytestmark = pytest.mark.slow


def test_parameter_count_and_output_shape():
    model = AirbenchNet()
    assert sum(p.numel() for p in model.parameters()) == 1_972_792
    # Trainable: all but the whitening filters (2x2x3x24) and the BatchNorm scales (2 x (64 + 256 + 256)).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_972_792 - 288 - 1152
    out = model.eval()(torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert AirbenchNet(num_classes=4)(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_batchnorm_shifts_keep_their_learning_rate_under_sync_batchnorm():
    # torchrun --sync-bn converts the BatchNorms before the optimizer is built.
    from training.config import TrainConfig
    from training.optim import param_groups

    cfg = TrainConfig.for_recipe("default", "airbench")
    model = AirbenchNet()
    plain = [(len(g["params"]), g["lr"], g["weight_decay"]) for g in param_groups(cfg, model)]
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in param_groups(cfg, synced)] == plain
    assert plain[1][:2] == (6, cfg.lr * cfg.bias_lr_scale)  # the six BatchNorm shifts


def test_whitening_stem_whitens_the_patches_it_was_fitted_on():
    torch.manual_seed(0)
    mix = torch.randn(3, 3)
    # Correlated channels and neighbouring pixels, with every direction far above the eps of 5e-4.
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(256, 3, 32, 32)).cumsum(3)
    model = AirbenchNet()
    model.init_whitening(images)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # [N, 12, 31, 31]
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    # Identity covariance up to the eps added to the eigenvalues and the mean the patches carry.
    assert torch.allclose(cov.diagonal(), torch.ones(12), atol=0.05)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.05
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_tta_logits_average_six_views_with_airbench_weights():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    x = torch.randn(4, 3, 8, 8)
    f = lambda v: model(v)  # noqa: E731
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, pad[:, :, 0:8, 0:8], pad[:, :, 2:10, 2:10]]
    mirrored = [(f(v) + f(v.flip(3))) / 2 for v in views]
    expected = 0.5 * mirrored[0] + 0.25 * mirrored[1] + 0.25 * mirrored[2]
    assert torch.allclose(tta_logits(model, x, tta_flip=True, tta_translate=1), expected, atol=1e-6)


@pytest.mark.parametrize("flip,translate", [(False, 0), (True, 0), (True, 1), (False, 1)])
def test_the_graph_runs_the_views_as_one_batch_with_training_s_weights(flip, translate):
    from export.wrapper import ImageClassifier

    calls = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    wrapper = ImageClassifier(model, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], image_size=8, tta_flip=flip,
                              tta_translate=translate).eval()
    image = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    with torch.no_grad():
        logits, _ = wrapper(image)
    views = (2 if flip else 1) * (3 if translate else 1)
    assert calls == [4 * views]  # one call, all views in its batch: the exported graph holds the network once
    expected = tta_logits(model, wrapper.normalize(image), tta_flip=flip, tta_translate=translate)
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.fixture(scope="module")
def airbench_run(real_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("airbench")
    assert run_training("--model", "airbench", "--data", str(real_subset), "--epochs", "2", "--batch-size", "64",
                   "--val-every", "1", "--checkpoint-dir", str(out), "--quiet") == 0
    return out


def test_a_short_real_run_writes_everything_and_ships_the_last_epoch(airbench_run, real_subset, capsys):
    for name in ("best.pt", "last.pt", "history.json", "training_curves.png", "confusion_matrix.png", "results.md"):
        assert (airbench_run / name).stat().st_size > 0, name
    ckpt = load_checkpoint(airbench_run / "best.pt")
    assert ckpt.arch == "airbench" and ckpt.model_args == {"num_classes": 10}
    assert ckpt.epoch == 2 and ckpt.config["keep"] == "last" and ckpt.config["tta_translate"] == 1
    history = json.loads((airbench_run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[0]["lr"] == pytest.approx(0.15, rel=0.2)
    assert "flip + 1-pixel translate TTA" in (airbench_run / "results.md").read_text()
    # --eval-only rebuilds the network from the checkpoint and reproduces its test accuracy (6-view TTA).
    assert run_training("--eval-only", str(airbench_run / "best.pt"), "--data", str(real_subset)) == 0
    assert f"test accuracy {100 * ckpt.metrics['test_acc']:.2f}%" in capsys.readouterr().out


def test_resume_after_an_interrupt_reaches_the_uninterrupted_result(real_subset, tmp_path, monkeypatch):
    # 8 epochs of 2 steps: lookahead starts in epoch 4, averages first at step 10 and again at step 15, so the
    # interrupt after epoch 6 falls between them and last.pt must carry the average to continue exactly.
    base = ["--model", "airbench", "--data", str(real_subset), "--limit-train", "128", "--batch-size", "64",
            "--epochs", "8", "--quiet"]
    assert run_training(*base, "--checkpoint-dir", str(tmp_path / "whole")) == 0
    restore = interrupt_after(monkeypatch, 6)
    assert run_training(*base, "--checkpoint-dir", str(tmp_path / "cut")) == 130
    restore()
    assert load_checkpoint(tmp_path / "cut" / "last.pt").resume.ema["average"] is not None
    assert run_training("--resume", str(tmp_path / "cut" / "last.pt"), "--quiet") == 0
    a, b = (load_checkpoint(tmp_path / d / "best.pt").model for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def airbench_home(airbench_run, real_subset, tmp_path_factory):
    """A BENTOML_HOME with cifar10-airbench:latest, exported from the brief run on the real subset (parity checked on
    its 300 test images: the 6-view graph's parity over the whole test split took 3 of CI's 20 minutes)."""
    home = tmp_path_factory.mktemp("bentoml-airbench")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(airbench_run / "best.pt"), "--out",
                           str(home / "artifacts"), "--data", str(real_subset),
                           # int8 is tested on SimpleCNN and on an ensemble (tests/test_ensemble.py).
                           "--no-int8", "--bentoml"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "saved to the BentoML model store as cifar10-airbench:" in proc.stdout
    return home


def test_export_parity_with_translation_tta_in_the_graph(airbench_home):
    report = json.loads((airbench_home / "artifacts" / "export_report.json").read_text())
    assert report["passed"] and report["images"] == 300
    for name in ("torchscript", "onnxruntime"):
        entry = report["artifacts"][name]
        assert entry["max_abs_logit_diff"] <= 1e-4 and entry["top1_agreement"] == 1.0
    meta = json.loads((airbench_home / "artifacts" / "metadata.json").read_text())
    assert meta["architecture"] == "AirbenchNet" and meta["model_name"] == "cifar10-airbench"
    assert meta["tta_flip"] and meta["tta_translate"] == 1
    # Six views, one copy of the network: as many Conv nodes as the network has convolutions.
    from export.quantize import count_ops
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in AirbenchNet().modules())
    assert count_ops(airbench_home / "artifacts" / "model.onnx")["Conv"] == convs


def test_the_service_answers_with_airbench(airbench_home):
    import httpx

    srv = Server("serving.service:CIFAR10Classifier", airbench_home, {"CIFAR10_MODEL": "cifar10-airbench:latest"})
    try:
        path = cifar_test_images(1)[8]  # a ship
        r = httpx.post(f"{srv.url}/classify", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
        body = r.json()
        assert r.status_code == 200 and body["model"]["name"] == "cifar10-airbench"
        info = httpx.get(f"{srv.url}/model_info").json()
        assert info["architecture"] == "AirbenchNet" and info["tta_translate"] == 1
        # The service's probabilities are the exported graph's, computed here in-process.
        import onnxruntime as ort

        from contract.images import decode
        session = ort.InferenceSession(str(airbench_home / "artifacts" / "model.onnx"))
        probs = session.run(["probabilities"], {"image": decode(path.read_bytes())[None]})[0][0]
        assert body["confidence"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert body["index"] == int(np.argmax(probs))
    finally:
        srv.stop()


def test_distillation_trains_simplecnn_from_an_airbench_teacher(airbench_run, real_subset, tmp_path):
    teacher = airbench_run / "best.pt"
    assert run_training("--recipe", "distill", "--teacher", str(teacher), "--data", str(real_subset), "--epochs", "1",
                   "--batch-size", "64", "--checkpoint-dir", str(tmp_path), "--quiet") == 0
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.arch == "simplecnn" and ckpt.config["distill_weight"] == 0.9
    from contract.provenance import sha256_file
    assert ckpt.provenance["teacher"]["sha256"] == sha256_file(teacher)
    assert ckpt.provenance["teacher"]["arch"] == "airbench"
    assert ckpt.provenance["teacher"]["test_acc"] == load_checkpoint(teacher).metrics["test_acc"]


@pytest.mark.parametrize("teacher, message", [
    ("missing.pt", "does not exist"),
    ("four-classes", "predicts 4 classes"),
])
def test_a_teacher_that_cannot_teach_is_one_sentence_and_exit_2(airbench_run, real_subset, tmp_path, capsys,
                                                                teacher, message):
    if teacher == "four-classes":
        raw = torch.load(airbench_run / "best.pt", weights_only=True)
        raw["classes"] = raw["classes"][:4]
        teacher = str(tmp_path / "t4.pt")
        torch.save(raw, teacher)
    assert run_training("--recipe", "distill", "--teacher", teacher, "--data", str(real_subset), "--epochs", "1",
                   "--checkpoint-dir", str(tmp_path / "out"), "--quiet") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_checkpoint_of_one_network_resumed_as_another_is_refused(airbench_run, capsys):
    assert run_training("--resume", str(airbench_run / "last.pt"), "--model", "simplecnn", "--quiet") == 2
    assert "--model simplecnn differs from the checkpoint's airbench" in capsys.readouterr().err
