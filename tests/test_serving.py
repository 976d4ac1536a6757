"""The BentoML service as a user meets it: a real `bentoml serve` process on a free port."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image

from conftest import CIFAR10_CLASSES, ROOT, Server, cifar_test_images, encode, own_home, png_claiming

pytestmark = pytest.mark.slow
CLASSES = CIFAR10_CLASSES


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def post_image(client, data: bytes, name="x", ctype="image/jpeg", **fields):
    return client.post("/classify", files={"image": (name, data, ctype)}, data=fields)


def test_predictions_match_the_exported_model_in_process(client, bento_home):
    session = ort.InferenceSession(str(bento_home / "artifacts" / "model.onnx"))
    paths = cifar_test_images(2)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    expected, scores = session.run(["probabilities", "ood_score"], {"image": pixels})
    threshold = json.loads((bento_home / "artifacts" / "metadata.json").read_text())["ood"]["threshold"]
    for path, probs, score in zip(paths, expected, scores, strict=True):
        r = client.post("/classify", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index"] == int(probs.argmax()) and body["label"] == CLASSES[body["index"]]
        # The out-of-distribution score of the graph, and the export's threshold on it.
        assert body["ood_score"] == pytest.approx(float(score), abs=1e-4)
        assert body["in_distribution"] is bool(score <= threshold)
        assert abs(body["confidence"] - float(probs.max())) < 1e-5
        assert [t["index"] for t in body["top_k"]] == list(np.argsort(-probs)[:3])
        assert body["model"]["name"] == "cifar10-simplecnn"
        assert body["model"]["runtime"] == "onnx" and body["model"]["device"] == "cpu"


def test_top_k_and_probabilities(client):
    data = cifar_test_images(1)[0].read_bytes()
    body = post_image(client, data, top_k="10").json()
    assert len(body["top_k"]) == 10
    assert abs(sum(t["probability"] for t in body["top_k"]) - 1) < 1e-4
    probs = [t["probability"] for t in body["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert len(post_image(client, data, top_k="1").json()["top_k"]) == 1


def _formats() -> dict[str, tuple[bytes, str]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    frames = [rgb.convert("P"), Image.new("P", (40, 50))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    exif = rgb.getexif()
    exif[0x0112] = 6
    return {
        "jpeg": (encode(rgb, "JPEG"), "image/jpeg"),
        "png": (encode(rgb, "PNG"), "image/png"),
        "png16": (encode(Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16)), "PNG"), "image/png"),
        "palette": (encode(rgb.convert("P"), "PNG"), "image/png"),
        "rgba": (encode(rgb.convert("RGBA"), "PNG"), "image/png"),
        "webp": (encode(rgb, "WEBP"), "image/webp"),
        "gif": (gif.getvalue(), "image/gif"),
        "bmp": (encode(rgb, "BMP"), "image/bmp"),
        "tiff": (encode(rgb, "TIFF"), "image/tiff"),
        "gray": (encode(rgb.convert("L"), "PNG"), "image/png"),
        "cmyk": (encode(rgb.convert("CMYK"), "JPEG"), "image/jpeg"),
        "exif": (encode(rgb, "JPEG", exif=exif), "image/jpeg"),
        "large": (encode(rgb.resize((1024, 768)), "JPEG"), "image/jpeg"),
        "jpeg_as_image/jpg": (encode(rgb, "JPEG"), "image/jpg"),
        "jpeg_as_octet-stream": (encode(rgb, "JPEG"), "application/octet-stream"),
    }


@pytest.mark.parametrize("name", list(_formats()))
def test_every_format_is_classified(client, name):
    data, ctype = _formats()[name]
    r = post_image(client, data, name=f"upload.{name}", ctype=ctype)
    assert r.status_code == 200, r.text
    assert r.json()["label"] in CLASSES


def _bad_requests():
    jpeg = cifar_test_images(1)[0].read_bytes()
    return {
        "not_an_image": (lambda c: post_image(c, b"just some text", ctype="text/plain"), 400, "not_an_image"),
        "truncated": (lambda c: post_image(c, jpeg[: len(jpeg) // 3]), 400, "corrupt_image"),
        "empty": (lambda c: post_image(c, b""), 400, "empty_file"),
        "missing_field": (lambda c: c.post("/classify", files={"picture": ("a.jpg", jpeg, "image/jpeg")}), 400,
                          "missing_field"),
        "text_field_url": (lambda c: c.post("/classify", data={"image": "http://127.0.0.1:9/x.jpg"},
                                            files={"other": ("a", b"a")}), 400, "not_a_file"),
        "text_body": (lambda c: c.post("/classify", content=b"x", headers={"Content-Type": "text/plain"}), 415,
                      "unsupported_media_type"),
        "json_not_base64": (lambda c: c.post("/classify", json={"image": "x"}), 400, "invalid_base64"),
        "too_large": (lambda c: post_image(c, jpeg + b"\0" * (10 * 1024 * 1024)), 413, "payload_too_large"),
        "bomb": (lambda c: post_image(c, png_claiming(60_000, 60_000), ctype="image/png"), 413, "image_too_large"),
        "top_k_zero": (lambda c: post_image(c, jpeg, top_k="0"), 400, "invalid_top_k"),
        "top_k_big": (lambda c: post_image(c, jpeg, top_k="11"), 400, "invalid_top_k"),
        "top_k_word": (lambda c: post_image(c, jpeg, top_k="three"), 400, "invalid_top_k"),
        "batch_65": (lambda c: c.post("/classify_batch", files=[("images", (f"{i}.jpg", jpeg, "image/jpeg"))
                                                                 for i in range(65)]), 400, "too_many_images"),
        "batch_bad_item": (lambda c: c.post("/classify_batch", files=[("images", ("a.jpg", jpeg, "image/jpeg")),
                                                                       ("images", ("b.txt", b"nope", "text/plain"))]),
                           400, "not_an_image"),
    }


@pytest.mark.parametrize("name", list(_bad_requests()))
def test_bad_input_is_a_clear_4xx_and_the_service_survives(client, name):
    send, status, code = _bad_requests()[name]
    r = send(client)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    ok = post_image(client, cifar_test_images(1)[0].read_bytes())
    assert ok.status_code == 200 and ok.json()["label"] in CLASSES


def test_batch_keeps_request_order(client):
    paths = cifar_test_images(1)
    single = [post_image(client, p.read_bytes()).json() for p in paths]
    r = client.post("/classify_batch", files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths])
    assert r.status_code == 200, r.text
    batch = r.json()
    assert [b["index"] for b in batch] == [s["index"] for s in single]
    for b, s in zip(batch, single, strict=True):
        assert abs(b["confidence"] - s["confidence"]) < 1e-5
        assert b["ood_score"] == pytest.approx(s["ood_score"], abs=1e-4)
        assert b["in_distribution"] == s["in_distribution"]


def test_concurrent_requests_get_their_own_answers(client, server):
    paths = cifar_test_images(2)
    expected = {p: post_image(client, p.read_bytes()).json()["index"] for p in paths}

    def one(p):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return p, post_image(c, p.read_bytes()).json()["index"]

    with ThreadPoolExecutor(8) as pool:
        for p, idx in pool.map(one, paths * 3):
            assert idx == expected[p]


def test_model_info_readyz_livez_metrics(client):
    info = client.post("/model_info").json()
    assert info["classes"] == CLASSES and info["input"]["shape"] == [-1, 32, 32, 3]
    assert info["model"]["runtime"] == "onnx" and info["tag"].startswith("cifar10-simplecnn:")
    assert "test_acc" in info["metrics"]
    assert info["serving"]["resize"] == "center-crop" and info["ood"]["threshold"] > 0
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    # cifar10_predictions_total counts each classified image under its predicted label, and explanations not.
    image = cifar_test_images(1)[0]
    part = ("image", (image.name, image.read_bytes(), "image/jpeg"))
    before = _predictions(client)
    label = client.post("/classify", files=[part]).json()["label"]
    assert _predictions(client) == {**before, label: before.get(label, 0) + 1}
    assert client.post("/explain", files=[part]).status_code == 200
    client.post("/classify_batch", files=[("images", part[1]), ("images", part[1])]).raise_for_status()
    assert _predictions(client) == {**before, label: before.get(label, 0) + 3}
    # What an operator watches for drift: answers by in_distribution, and the served confidence's histogram.
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    flagged_before = _total(client, 'cifar10_in_distribution_total{in_distribution="false"}')
    observed_before = _total(client, "cifar10_confidence_count")
    body = post_image(client, encode(Image.fromarray(noise), "PNG"), "noise.png", "image/png").json()
    assert body["in_distribution"] is False and body["ood_score"] > info["ood"]["threshold"]
    assert _total(client, 'cifar10_in_distribution_total{in_distribution="false"}') == flagged_before + 1
    assert _total(client, "cifar10_confidence_count") == observed_before + 1
    assert _total(client, 'cifar10_confidence_bucket{le="1.0"}') == observed_before + 1


def _total(client, sample: str) -> float:
    """The sum of /metrics lines that start with `sample` (a name, or a name and the start of its labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(sample.rstrip("}")) and not line.startswith("#"))


def _samples(client, metric: str) -> list[tuple[str, float]]:
    """(label set, value) of every sample of a metric in /metrics."""
    samples = []
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            samples.append((labels, float(value)))
    return samples


def _predictions(client) -> dict[str, float]:
    """cifar10_predictions_total by label."""
    counts = {}
    for labels, value in _samples(client, "cifar10_predictions_total"):
        name = labels.split('label="', 1)[1].split('"', 1)[0]
        counts[name] = counts.get(name, 0) + value
    return counts


def _classify_count(client) -> float:
    """BentoML's own request counter for POST /classify answered 200, summed over its label sets."""
    return sum(value for labels, value in _samples(client, "bentoml_service_request_total")
               if 'endpoint="/classify"' in labels and 'http_response_code="200"' in labels)


def test_fast_lane_keeps_bentoml_request_metrics(client, server):
    # The lane (serving/platform/fastlane.py) skips BentoML's middleware but must still be counted by it.
    post_image(client, cifar_test_images(1)[0].read_bytes())  # the first request installs the lane
    before = _classify_count(client)
    for p in cifar_test_images(1)[:3]:
        assert post_image(client, p.read_bytes()).status_code == 200
    assert _classify_count(client) == before + 3
    assert client.post("/model_info").json()["serving"]["fast_lane"] is True
    assert "fast lane on for /classify, /classify_batch (BentoML request metrics kept)" in server.log.read_text()


def test_torchscript_runtime_gives_the_same_answers(bento_home, client, server):
    # This server also turns the access log on, to check that the switch works.
    srv = Server("serving.service:CIFAR10Classifier", bento_home,
                 {"CIFAR10_RUNTIME": "torchscript", "CIFAR10_ACCESS_LOG": "on"})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as ts:
            for p in cifar_test_images(1):
                a = post_image(client, p.read_bytes()).json()
                b = post_image(ts, p.read_bytes()).json()
                assert b["model"]["runtime"] == "torchscript" and b["model"]["device"] == "cpu"
                assert a["index"] == b["index"] and abs(a["confidence"] - b["confidence"]) < 1e-4
                assert b["ood_score"] == pytest.approx(a["ood_score"], rel=1e-4, abs=2e-4)
    finally:
        srv.stop()
    assert "path=/classify" in srv.log.read_text()
    assert "path=/classify" not in server.log.read_text()  # off by default


def test_int8_runtime_answers_and_says_so(bento_home, client):
    srv = Server("serving.service:CIFAR10Classifier", bento_home, {"CIFAR10_RUNTIME": "onnx-int8"})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as q:
            answers = [(post_image(client, p.read_bytes()).json(), post_image(q, p.read_bytes()).json())
                       for p in cifar_test_images(2)]
            assert all(b["model"]["runtime"] == "onnx-int8" and b["model"]["device"] == "cpu" for _, b in answers)
            assert all(isinstance(b["in_distribution"], bool) for _, b in answers)
            assert q.get("/model_info").json()["model"]["runtime"] == "onnx-int8"
            # int8 moves probabilities a little; on real images the labels mostly agree with fp32
            assert sum(a["index"] == b["index"] for a, b in answers) >= 0.8 * len(answers)
    finally:
        srv.stop()


def test_onnx_path_does_not_import_torch(bento_home):
    probe = ("import sys, bentoml; from pathlib import Path; import serving.service; "
             "from serving.backends import load_backend; "
             "b = load_backend(Path(bentoml.models.get('cifar10-simplecnn:latest').path), 'onnx', 'auto', 1); "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**__import__("os").environ, "BENTOML_HOME": str(bento_home)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_built_bento_serves(bento_home, tmp_path):
    env = {**__import__("os").environ, "BENTOML_HOME": str(bento_home), "BENTOML_DO_NOT_TRACK": "True"}
    cli = str(Path(sys.executable).parent / "bentoml")
    build = subprocess.run([cli, "build", "--output", "tag"], capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=300)
    assert build.returncode == 0, build.stderr + build.stdout
    tag = build.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    assert tag.startswith("cifar10_classifier:")
    bento_dir = bento_home / "bentos" / "cifar10_classifier" / tag.split(":")[1]
    packed = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*") if p.is_file()}
    assert "serving/service.py" in packed and "serving/static/index.html" in packed and "contract/images.py" in packed
    # BentoML 1.4 keeps a bento's models in the model store and records them per service (containerize and
    # export copy them in); the class-scope model must be that reference, and it holds every exported file.
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    tags = [m["tag"] for svc in info["services"] for m in svc["models"]]
    assert [t.split(":")[0] for t in tags] == ["cifar10-simplecnn"]
    name, version = tags[0].split(":")
    assert (bento_home / "models" / name / version / "model.int8.onnx").is_file()
    assert not any(p.startswith(("training/", "tests/", "export/", ".venv/")) for p in packed)
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "torch" not in requirements and "onnxruntime" in requirements
    srv = Server(tag, bento_home, cwd=tmp_path)  # away from the source tree: only the bento is used
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = post_image(c, cifar_test_images(1)[0].read_bytes())
            assert r.status_code == 200 and r.json()["label"] in CLASSES
            page = c.get("/ui")
            assert page.status_code == 200 and "<title>CIFAR-10 classifier</title>" in page.text
    finally:
        srv.stop()


def _cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_cuda_requested_without_cuda_refuses_to_start(bento_home):
    if _cuda_available():
        pytest.skip("this machine has CUDA; the refusal path needs one without")
    with pytest.raises(RuntimeError, match="CIFAR10_DEVICE=cuda") as refused:
        Server("serving.service:CIFAR10Classifier", bento_home, {"CIFAR10_DEVICE": "cuda"},
               fail_on="CIFAR10_DEVICE=cuda, but")
    assert "did not become ready" not in str(refused.value)  # it stopped at the refusal, not at the timeout


# Each runtime needs its own CUDA: onnxruntime-gpu's provider for onnx, a CUDA build of torch and a GPU for
# torchscript (the torch-free CPU image has neither; a GPU machine with plain onnxruntime has the second).
@pytest.mark.parametrize("runtime", [
    pytest.param("onnx", marks=pytest.mark.skipif(
        not _cuda_available(), reason="no CUDAExecutionProvider (onnxruntime-gpu and a GPU) here")),
    pytest.param("torchscript", marks=pytest.mark.skipif(
        not _torch_cuda_available(), reason="torch sees no CUDA GPU here")),
])
def test_cuda_runtime_answers_like_cpu(bento_home, client, runtime):
    srv = Server("serving.service:CIFAR10Classifier", bento_home,
                 {"CIFAR10_DEVICE": "cuda", "CIFAR10_RUNTIME": runtime})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as gpu:
            for p in cifar_test_images(1):
                a = post_image(client, p.read_bytes()).json()
                b = post_image(gpu, p.read_bytes()).json()
                assert b["model"]["device"] == "cuda"
                assert a["index"] == b["index"] and abs(a["confidence"] - b["confidence"]) < 1e-3
            image = cifar_test_images(1)[0].read_bytes()
            explained = [c.post("/explain", files={"image": ("x.jpg", image, "image/jpeg")}).json()
                         for c in (client, gpu)]
            assert explained[0]["target"]["index"] == explained[1]["target"]["index"]
            heat = [np.asarray(e["heatmap"]) for e in explained]
            assert heat[1].shape == (32, 32) and float(np.abs(heat[0] - heat[1]).max()) < 1e-3
    finally:
        srv.stop()


def test_a_non_square_photo_is_framed_by_the_resize_policy(client, bento_home, tmp_path):
    from contract.images import decode

    rng = np.random.default_rng(5)
    photo = encode(Image.fromarray(rng.integers(0, 256, (60, 150, 3), dtype=np.uint8)), "PNG")
    session = ort.InferenceSession(str(bento_home / "artifacts" / "model.onnx"))
    expected = {p: session.run(["probabilities"], {"image": decode(photo, resize=p)[None]})[0][0]
                for p in ("center-crop", "squash")}
    served = post_image(client, photo, "wide.png", "image/png", top_k="10").json()
    probs = {t["index"]: t["probability"] for t in served["top_k"]}
    assert max(abs(probs[i] - float(expected["center-crop"][i])) for i in range(10)) < 1e-5
    assert max(abs(probs[i] - float(expected["squash"][i])) for i in range(10)) > 1e-4  # not squashed
    with pytest.raises(RuntimeError, match="CIFAR10_RESIZE must be one of squash, center-crop, pad"):
        Server("serving.service:CIFAR10Classifier", own_home(bento_home, tmp_path), {"CIFAR10_RESIZE": "stretch"},
               fail_on="CIFAR10_RESIZE must be one of")
