"""Explanations and calibration: the Grad-CAM math, the exported graphs' parity, temperature scaling, /explain
against a real `bentoml serve`, the Python client and cifar10-classify --explain."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clients import Client, ServiceError
from conftest import ROOT, cifar_test_images
from export.calibration import ece, figures, fit_temperature
from export.explain import AirbenchCam, SimpleCNNCam, autograd_cam, normalize_heat
from serving.explain import overlay_png
from training.models import AirbenchNet, SimpleCNN


class FixedMap(torch.nn.Module):
    """Stands in for airbench's conv layers: always the same activation map."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a

    def forward(self, x):
        return self.a.expand(x.shape[0], -1, -1, -1)


def test_grad_cam_of_a_hand_built_case():
    # Two channels on a 3x3 grid; the head maps max-pooled channels to 2 classes with weights w.
    a = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
                      [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])[None]  # [1, 2, 3, 3]
    model = AirbenchNet(num_classes=2, widths=(4, 4, 2))
    model.layers = FixedMap(a)
    model.head.weight.data = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    model.logit_scale = 1.0
    x = torch.zeros(1, 3, 32, 32)
    # Class 0: alpha = w[0] / 9 = (1/9, -1/9); cam = relu(A0 - A1) / 9 -> only the centre column's 1 and 2 stay.
    expected = torch.relu(a[0, 0] - a[0, 1]) / 9
    cam = AirbenchCam(model).eval()
    heat, logits = cam(x, torch.tensor([0]))
    assert torch.allclose(logits, torch.tensor([[2.0 - 3.0, 1.0 + 6.0]]))  # max-pools are 2 and 3
    assert torch.allclose(heat, normalize_heat(expected[None], 32))
    assert heat.max() == 1.0 and heat[0, 0, 0] == 0.0
    assert torch.allclose(autograd_cam("airbench", model, x, torch.tensor([0]), 32), heat)
    # Class 1 looks at both channels, the third more: its peak is the bottom-right corner.
    heat1, _ = cam(x, torch.tensor([1]))
    assert float(heat1[0, -1, -1]) == pytest.approx(1.0, abs=1e-6)


def test_layer_cam_of_a_hand_built_case():
    # SimpleCNN's explained map A [1, 128, 4, 4] (the last block's pooled output): hidden unit 0 reads channel 0 at
    # (1, 2), unit 1 reads channel 1 at (0, 0) and (3, 3); class 0 = unit 0 - unit 1.
    a = torch.zeros(1, 128, 4, 4)
    a[0, 0] = torch.arange(16.0).view(4, 4) / 10
    a[0, 1, 0, 0], a[0, 1, 3, 3] = 2.0, 1.0
    model = SimpleCNN().eval()
    cam = SimpleCNNCam(model).eval()
    cam.trunk = FixedMap(a)
    with torch.no_grad():
        cam.fc1.weight.zero_(), cam.fc1.bias.zero_(), cam.fc2.weight.zero_(), cam.fc2.bias.zero_()
        cam.fc1.weight[0, 0 * 16 + 1 * 4 + 2] = 1.0  # flattened index k * 16 + row * 4 + col
        cam.fc1.weight[1, 1 * 16 + 0 * 4 + 0], cam.fc1.weight[1, 1 * 16 + 3 * 4 + 3] = 1.0, 1.0
        cam.fc2.weight[0, :2] = torch.tensor([1.0, -1.0])
        heat, logits = cam(torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    assert torch.allclose(logits[0, 0], torch.tensor(0.6 - 3.0))
    # The gradient is +1 at channel 0's (1, 2) and -1 at channel 1's two positions, which ReLU(gradient) drops:
    # the map is channel 0's 0.6 at (1, 2) and nothing else. (Grad-CAM weighs whole channels: channel 0's positive
    # mean gradient would light most of channel 0, peaking at (3, 2).)
    expected = torch.zeros(4, 4)
    expected[1, 2] = 0.6
    assert torch.allclose(heat, normalize_heat(expected[None], 32))
    # The same by autograd through the model's own head (cam shares its fc layers).
    a = a.clone().requires_grad_(True)
    model.classifier(a).gather(1, torch.tensor([[0]])).sum().backward()
    by_autograd = normalize_heat(torch.relu((torch.relu(a.grad) * a.detach()).sum(1)), 32)
    assert torch.allclose(heat, by_autograd, atol=1e-6)


@pytest.mark.parametrize("arch", ["simplecnn", "airbench"])
def test_explicit_graphs_equal_autograd_on_trained_like_weights(arch):
    torch.manual_seed(0)
    model = (SimpleCNN() if arch == "simplecnn" else AirbenchNet()).eval()
    for m in model.modules():  # statistics and shifts that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    x, target = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    cam = (SimpleCNNCam if arch == "simplecnn" else AirbenchCam)(model).eval()
    with torch.no_grad():
        heat, logits = cam(x, target)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert (heat - autograd_cam(arch, model, x, target, 32)).abs().max() <= 1e-5
    peaks = heat.amax((1, 2))  # 1 where the class has positive evidence somewhere, 0 where it has none
    assert heat.shape == (8, 32, 32) and heat.min() >= 0 and all(p == 0 or abs(p - 1) < 1e-6 for p in peaks.tolist())


def test_images_at_a_relu_kink_are_found_and_left_out_of_the_heatmap_parity():
    from export.explain import at_kink
    from export.parity import explain_report

    torch.manual_seed(0)
    model = SimpleCNN().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        hidden = model.classifier[1](model.features(x).flatten(1))
        model.classifier[1].bias[7] -= hidden[2, 7]  # image 2's hidden unit 7 now sits at the ReLU's kink
        a = model.features(x)
    assert at_kink("simplecnn", model, a).tolist() == [False, False, True, False]
    assert not at_kink("airbench", AirbenchNet().eval(), a).any()
    heat, reference = np.zeros((4, 32, 32)), np.zeros((4, 32, 32))
    heat[1, 0, 0], heat[2, 5, 5] = 2e-6, 0.004  # the kink image may differ; the others must not
    probs = np.full((4, 10), 0.1)
    report = explain_report(heat, reference, probs, probs, "features.2", "LayerCAM", np.array([0, 0, 1, 0], bool))
    assert report["max_abs_heatmap_diff"] == pytest.approx(2e-6) and report["max_abs_heatmap_diff_all"] == 0.004
    assert report["images_at_relu_kink"] == 1 and report["compared_images"] == 3


def test_temperature_scaling_fixes_an_over_confident_model():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, 10, generator=g) * 2
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    over = true_logits * 2.5  # the same ranking, far too sure of itself
    t = fit_temperature(over, labels)
    assert 2.3 < t < 2.7
    before, after = figures(over, labels, 1.0), figures(over, labels, t)
    assert before["ece"] > 0.1 and after["ece"] < 0.02 and after["nll"] < before["nll"]
    assert after["accuracy"] == before["accuracy"]  # a temperature never changes the top class


def test_ece_of_a_hand_built_case():
    # Two bins used: 0.9-confident (right 1 of 2) and 0.6-confident (right 2 of 2).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert ece(probs, labels) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))


def test_a_val_split_checkpoint_is_calibrated_on_its_held_out_training_images(brief_checkpoint, real_subset):
    import dataclasses

    from export.pipeline import CalibrationImages, ExportError, Inputs, calibrate, eager_logits
    from export.wrapper import classifier_from_checkpoint
    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig
    from training.data import load_split, prepare_data

    ckpt = load_checkpoint(brief_checkpoint)
    n_train = len(load_split(real_subset, "train"))
    ran = {**ckpt.provenance, "dataset": {**ckpt.provenance["dataset"], "train_images": n_train - 120,
                                          "val_images": 120}}
    ckpt = dataclasses.replace(ckpt, config={**ckpt.config, "val_split": 120, "seed": 3, "data": str(real_subset)},
                               provenance=ran)
    wrapper = classifier_from_checkpoint(ckpt, brief_checkpoint)
    test = load_split(real_subset, "test")
    logits = eager_logits(wrapper, test.images)
    cal = CalibrationImages(test.images, test.labels, logits)

    def fitted(checkpoint):
        return calibrate(Inputs(brief_checkpoint, checkpoint, wrapper, str(real_subset), test), cal).record

    result = fitted(ckpt)
    # The images the run held out, as training chose them, fit T; every test image reports.
    _, val, _, _ = prepare_data(TrainConfig.from_dict(ckpt.config))
    assert result["fit_images"] == 120 and result["report_images"] == len(test) == 300
    assert result["temperature"] == pytest.approx(fit_temperature(eager_logits(wrapper, val.images), val.labels))
    assert "--val-split 120" in result["images"] and result["fit_source"] == "held-out training images"
    assert result["before"] == figures(logits, test.labels, 1.0)
    # Another copy of the data (here: one with more training images) cannot rebuild the run's hold-out.
    bigger = dataclasses.replace(ckpt, provenance={**ran, "dataset": {**ran["dataset"], "train_images": n_train}})
    with pytest.raises(ExportError, match=f"has {n_train} images, the run's had {n_train + 120}"):
        fitted(bigger)
    # Without a hold-out, a seeded half of the test images fits and the other half reports.
    plain = fitted(load_checkpoint(brief_checkpoint))
    assert plain["fit_images"] == plain["report_images"] == 150
    assert plain["fit_source"] == "test images (seeded half)"


def test_overlay_is_a_png_of_the_upscaled_image():
    pixels = np.zeros((32, 32, 3), np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:16] = 1.0
    im = Image.open(io.BytesIO(overlay_png(pixels, heat)))
    assert im.format == "PNG" and im.size == (160, 160)
    top, bottom = np.asarray(im)[10, 80], np.asarray(im)[150, 80]
    assert top[0] > top[2] and bottom[2] > bottom[0]  # hot is red, cold is blue


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url) as c:
        yield c


def test_explain_endpoint_answers_with_heatmap_overlay_and_classification(client, server):
    import httpx

    image = cifar_test_images(1)[8]
    r = httpx.post(f"{server.url}/explain", files={"image": (image.name, image.read_bytes(), "image/jpeg")})
    body = r.json()
    assert r.status_code == 200
    assert {"label", "index", "confidence", "top_k", "target", "heatmap", "overlay", "model", "ood_score",
            "in_distribution"} <= set(body)
    heat = np.array(body["heatmap"])
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0, abs=1e-4)
    assert body["target"]["label"] == body["label"]  # the top class by default
    classified = client.classify(image)
    assert (classified.label, classified.confidence) == pytest.approx((body["label"], body["confidence"]), abs=1e-5)
    assert classified.ood_score == pytest.approx(body["ood_score"], abs=1e-4)
    assert classified.in_distribution == body["in_distribution"]
    assert body["overlay"].startswith("data:image/png;base64,")
    png = httpx.post(f"{server.url}/explain", files={"image": (image.name, image.read_bytes(), "image/jpeg")},
                     headers={"accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (160, 160)


@pytest.mark.parametrize("target, expected", [("ship", 8), ("2", 2), (0, 0)])
def test_explain_a_chosen_class(client, bento_home, target, expected):
    import onnxruntime as ort

    from contract.images import decode

    image = cifar_test_images(1)[3]
    e = client.explain(image, target=target)
    assert e.target.index == expected and e.target.label == client.model_info()["classes"][expected]
    assert len(e.heatmap) == 32 and e.overlay_png.startswith(b"\x89PNG")
    # The heatmap is the chosen class's: explain.onnx run here for that class, not for the top one.
    session = ort.InferenceSession(str(bento_home / "artifacts" / "explain.onnx"), providers=["CPUExecutionProvider"])
    pixels = decode(image.read_bytes())[None]
    (wanted,), _ = session.run(["heatmap", "probabilities"],
                               {"image": pixels, "target": np.array([expected], np.int64)})
    (top,), _ = session.run(["heatmap", "probabilities"], {"image": pixels, "target": np.array([-1], np.int64)})
    assert np.abs(np.array(e.heatmap) - wanted).max() < 1e-3
    if expected != e.prediction.index:  # another class than the top one: another map
        assert np.abs(wanted - top).max() > 1e-2


@pytest.mark.parametrize("target", ["spaceship", "10", "-1"])
def test_an_unknown_target_is_invalid_target(client, target):
    with pytest.raises(ServiceError) as err:
        client.explain(cifar_test_images(1)[0], target=target)
    assert err.value.status == 400 and err.value.code == "invalid_target"


def test_explain_refuses_what_classify_refuses(server):
    import httpx

    for data, code in ((b"not an image", "not_an_image"), (b"", "empty_file")):
        r = httpx.post(f"{server.url}/explain", files={"image": ("x", data, "application/octet-stream")})
        assert r.status_code == 400 and r.json()["code"] == code
    r = httpx.post(f"{server.url}/explain", json={"image": "https://example.com/x.jpg"})
    assert r.json()["code"] == "invalid_base64"


def test_model_info_and_export_report_carry_calibration_and_the_explained_layer(client, bento_home):
    info = client.model_info()
    assert info["calibration"]["temperature"] > 0 and info["calibration"]["bins"] == 15
    assert {"ece", "nll", "accuracy"} <= set(info["calibration"]["after"])
    assert info["explanation"]["layer"].startswith("features.2")
    report = json.loads((bento_home / "artifacts" / "export_report.json").read_text())
    assert report["explanation"]["images"] == 1000 and report["explanation"]["max_abs_heatmap_diff"] <= 1e-4
    assert report["calibration"]["report_images"] == 5000
    assert (bento_home / "artifacts" / "reliability.png").stat().st_size > 1000


def test_cifar10_classify_explain_writes_overlays(server, tmp_path):
    files = [str(p) for p in cifar_test_images(1)[:2]]
    cmd = [sys.executable, "-m", "clients", "--url", server.url, "--explain", str(tmp_path), "--target", "cat",
           "--json", *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Image.open(line["overlay"]).size for line in lines] == [(160, 160), (160, 160)]
