"""Ensembles exported as one graph (export/ensemble.py): the graph against its members, the export's refusals, and a
two-member ensemble of brief models exported, served and explained end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, Server, cifar_test_images, own_home, run_training
from contract.provenance import sha256_file
from export import ood
from export.ensemble import EnsembleClassifier, EnsembleExplainWrapper, check_members, mean_heat
from export.explain import cam_for
from export.wrapper import ImageClassifier
from training.models import ResidualNet, SimpleCNN


def scored(model: torch.nn.Module, arch: str, temperature: float, seed: int) -> ood.ScoredClassifier:
    """A member as the export makes it: a network in its classifier, calibrated, its OOD score fitted (random data)."""
    torch.manual_seed(seed)
    base = ImageClassifier(model.eval(), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], tta_flip=True,
                           temperature=temperature).eval()
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    return ood.fit(arch, base, images, labels, images[:20], images[20:], "random", 10).classifier


@pytest.fixture(scope="module")
def two_members():
    return [scored(SimpleCNN(dropout=0.0), "simplecnn", 1.7, 0), scored(ResidualNet(widths=(16, 32, 32)), "residual",
                                                                        0.8, 1)]


def test_with_its_temperature_at_1_the_ensemble_is_the_mean_of_its_members_run_alone(two_members):
    ensemble = EnsembleClassifier(two_members).eval()
    image = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        alone = [m(image) for m in two_members]
        logits, probs, score = ensemble(image)
    mean = (alone[0][1] + alone[1][1]) / 2
    assert torch.allclose(probs, mean, atol=1e-5) and torch.allclose(logits.exp(), mean, atol=1e-6)
    assert torch.allclose(score, (alone[0][2] + alone[1][2]) / 2, atol=1e-5)
    # Its own temperature sharpens or softens the mean, never changing the answer.
    ensemble.temperature.fill_(0.5)
    with torch.no_grad():
        sharper = ensemble(image)[1]
    assert torch.equal(sharper.argmax(1), mean.argmax(1))
    assert (sharper.max(1).values >= mean.max(1).values - 1e-6).all()


def test_the_ensemble_heatmap_is_the_members_maps_averaged_and_both_graphs_script(two_members):
    ensemble = EnsembleClassifier(two_members).eval()
    cams = [cam_for("simplecnn", two_members[0].model, 32), cam_for("residual", two_members[1].model, 32)]
    explainer = EnsembleExplainWrapper(ensemble, cams).eval()
    image = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    target = torch.tensor([-1, 3, -1, 9])
    with torch.no_grad():
        heat, probs, _ = explainer(image, target)
        chosen = torch.where(target < 0, ensemble(image)[1].argmax(1), target)
        maps = [cam(m.normalize(image), chosen)[0] for m, cam in zip(two_members, cams, strict=True)]
    assert torch.allclose(heat, mean_heat((maps[0] + maps[1]) / 2), atol=1e-6)
    assert heat.flatten(1).amax(1).tolist() == pytest.approx([1.0] * 4)
    scripted = torch.jit.script(explainer)
    with torch.no_grad():
        assert torch.allclose(scripted(image, target)[0], heat, atol=1e-6)
        assert torch.allclose(torch.jit.script(ensemble)(image)[1], probs, atol=1e-6)


def test_members_with_other_classes_or_input_sizes_are_refused():
    def ckpt(classes, size):
        return SimpleNamespace(classes=classes, normalization=SimpleNamespace(input_size=size))

    with pytest.raises(ValueError, match="ensemble members predict different classes"):
        check_members([ckpt(["cat", "dog"], 32), ckpt(["cat", "frog"], 32)])
    with pytest.raises(ValueError, match="ensemble members take different input sizes: 32 and 64"):
        check_members([ckpt(["cat"], 32), ckpt(["cat"], 64)])


def export(*argv: str, home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **({"BENTOML_HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-m", "export", *argv], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=900)


def test_a_checkpoint_listed_twice_is_one_sentence_and_exit_2(brief_checkpoint, tmp_path):
    proc = export("--checkpoint", str(brief_checkpoint), "--checkpoint", str(brief_checkpoint), "--out",
                  str(tmp_path / "out"))
    assert proc.returncode == 2 and "is listed twice; an ensemble's members must differ" in proc.stderr
    copy = tmp_path / "copy.pt"
    shutil.copy(brief_checkpoint, copy)
    proc = export("--checkpoint", str(brief_checkpoint), "--checkpoint", str(copy), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "are the same file's bytes" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def residual_member(real_subset, tmp_path_factory):
    # Without test-time views: the members' graphs are exported and quantized whole, and six views of a residual
    # network would triple this module's time (six views in the graph: tests/test_airbench.py). Half width: the
    # export rebuilds the network from the channels its checkpoint carries.
    out = tmp_path_factory.mktemp("residual-member")
    assert run_training("--model", "residual", "--data", str(real_subset), "--epochs", "1", "--batch-size", "64",
                        "--limit-train", "256", "--no-tta-flip", "--tta-translate", "0", "--width", "0.5",
                        "--checkpoint-dir", str(out), "--quiet") == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def ensemble_home(brief_checkpoint, residual_member, real_subset, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-ensemble")
    proc = export("--checkpoint", str(brief_checkpoint), "--checkpoint", str(residual_member), "--out",
                  str(home / "artifacts"), "--data", str(real_subset), "--int8-max-drop", "100", "--bentoml", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved to the BentoML model store as cifar10-ensemble:" in proc.stdout
    return home


def test_the_export_lists_its_members_and_passes_every_check(ensemble_home, brief_checkpoint, residual_member):
    art = ensemble_home / "artifacts"
    meta = json.loads((art / "metadata.json").read_text())
    assert meta["model_name"] == "cifar10-ensemble" and meta["architecture"] == "Ensemble(SimpleCNN, ResidualNet)"
    members = meta["members"]
    assert [m["source_checkpoint"]["sha256"] for m in members] == [sha256_file(brief_checkpoint),
                                                                   sha256_file(residual_member)]
    assert [m["arch"] for m in members] == ["simplecnn", "residual"] and all(m["temperature"] > 0 for m in members)
    score = meta["ood"]
    assert meta["calibration"]["temperature"] > 0 and len(score["members"]) == 2
    # The ensemble's own threshold, on a half of the subset's 300 test images; the other half reports.
    assert score["threshold_images"] + score["report_images"] == 300 and 0 <= score["false_rejection_rate"] <= 1
    assert meta["explanation"]["method"] == "mean of the members' maps: LayerCAM, Grad-CAM"
    assert len(meta["explanation"]["grid"]) == 2 and "int8" in meta
    report = json.loads((art / "export_report.json").read_text())
    assert report["passed"] and report["explanation"]["max_abs_heatmap_diff"] <= 1e-4
    assert report["artifacts"]["onnxruntime"]["max_abs_logit_diff"] <= 1e-4


def test_the_service_answers_explains_and_refuses_a_changed_graph(ensemble_home, tmp_path):
    import httpx
    import onnxruntime as ort

    from contract.images import decode

    srv = Server("serving.service:CIFAR10Classifier", own_home(ensemble_home, tmp_path),
                 {"CIFAR10_MODEL": "cifar10-ensemble:latest"})
    try:
        paths = cifar_test_images(1)[:3]
        session = ort.InferenceSession(str(ensemble_home / "artifacts" / "model.onnx"))
        threshold = json.loads((ensemble_home / "artifacts" / "metadata.json").read_text())["ood"]["threshold"]
        for path in paths:
            files = {"image": (path.name, path.read_bytes(), "image/jpeg")}
            body = httpx.post(f"{srv.url}/classify", files=files).json()
            probs, score = session.run(["probabilities", "ood_score"], {"image": decode(path.read_bytes())[None]})
            assert body["model"]["name"] == "cifar10-ensemble" and body["index"] == int(np.argmax(probs[0]))
            assert body["confidence"] == pytest.approx(float(probs[0].max()), abs=1e-5)
            assert body["ood_score"] == pytest.approx(float(score[0]), abs=1e-3)
            assert body["in_distribution"] == (float(score[0]) <= threshold)
        info = httpx.get(f"{srv.url}/model_info").json()
        assert info["architecture"] == "Ensemble(SimpleCNN, ResidualNet)" and len(info["members"]) == 2
        explained = httpx.post(f"{srv.url}/explain", files=files)
        assert explained.status_code == 200 and len(explained.json()["heatmap"]) == 32
    finally:
        srv.stop()
    # A graph changed after export (here: another export's model.onnx) is caught when the service loads.
    changed = tmp_path / "changed"
    shutil.copytree(ensemble_home / "models", changed / "models", symlinks=False)
    (folder,) = [p for p in (changed / "models" / "cifar10-ensemble").iterdir() if p.is_dir()]
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeError, match="model.onnx of model cifar10-ensemble:.* no longer match the sha256"):
        srv = Server("serving.service:CIFAR10Classifier", changed, {"CIFAR10_MODEL": "cifar10-ensemble:latest"},
                     fail_on="no longer match the sha256")
        srv.stop()


def test_the_ood_benchmark_compares_detectors_on_one_named_member(ensemble_home, residual_member, real_subset,
                                                                  tmp_path):
    art = str(ensemble_home / "artifacts")

    def ood(*argv):
        return subprocess.run([sys.executable, "benchmarks/ood.py", art, "--data", str(real_subset / "test"),
                               "--images", "100", "--compare", *argv], capture_output=True, text=True, cwd=ROOT,
                              timeout=600)

    proc = ood()
    assert proc.returncode == 2 and "is an ensemble of 2 members" in proc.stderr and "Traceback" not in proc.stderr
    stranger = tmp_path / "stranger.pt"
    stranger.write_bytes(residual_member.read_bytes() + b"\0")
    proc = ood("--checkpoint", str(stranger))
    assert proc.returncode == 2 and "is not one of the ensemble's members" in proc.stderr
    proc = ood("--checkpoint", str(residual_member))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"shipped", "energy", "ViM (penultimate)"} <= set(result["results"])
