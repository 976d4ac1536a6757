"""The Python client and `cifar10-classify` against a real served model (and a stub for retries)."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from local_service import free_port
from PIL import Image

from clients import Client, Prediction, ServiceError, ServiceUnreachable
from conftest import CIFAR10_CLASSES, ROOT, cifar_test_images
from contract.images import decode

pytestmark = pytest.mark.slow
CLASSES = CIFAR10_CLASSES


@pytest.fixture(scope="module")
def onnx_probs(bento_home):
    session = ort.InferenceSession(str(bento_home / "artifacts" / "model.onnx"))

    def run(paths: list[Path]) -> np.ndarray:
        pixels = np.stack([decode(Path(p).read_bytes(), 32, 40_000_000) for p in paths])
        return session.run(["probabilities"], {"image": pixels})[0]
    return run


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, timeout=30) as c:
        yield c


def test_path_bytes_file_and_pil_image_give_the_models_answer(client, onnx_probs):
    paths = cifar_test_images()
    expected = onnx_probs(paths)
    for path, probs in zip(paths, expected, strict=True):
        with open(path, "rb") as f, tempfile.TemporaryFile() as unnamed:  # its .name is an int
            unnamed.write(path.read_bytes())
            unnamed.seek(0)
            answers = [client.classify(path), client.classify(str(path), top_k=5), client.classify(path.read_bytes()),
                       client.classify(f), client.classify(Image.open(path)), client.classify(unnamed)]
        for a in answers:
            assert isinstance(a, Prediction)
            assert a.index == int(probs.argmax()) and a.label == CLASSES[a.index]
            assert abs(a.confidence - float(probs.max())) < 1e-5
            assert a.model["runtime"] == "onnx"
        assert len(answers[0].top_k) == 3 and len(answers[1].top_k) == 5
        assert [s.index for s in answers[1].top_k] == list(np.argsort(-probs)[:5])


def test_batch_keeps_order_and_splits_past_the_service_limit(client, onnx_probs):
    paths = cifar_test_images(7)  # 70 images: two requests of at most 64
    expected = onnx_probs(paths).argmax(1)
    answers = client.classify_batch(paths, top_k=1)
    assert [a.index for a in answers] == list(expected)
    assert client.classify_batch([]) == []


def test_info_and_readiness(client, server):
    info = client.model_info()
    assert info["classes"] == CLASSES and info["model"]["name"] == "cifar10-simplecnn"
    assert client.ready() is True
    assert Client(f"http://127.0.0.1:{free_port()}", retries=0).ready() is False


def test_service_errors_carry_message_status_and_code(client, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ServiceError) as err:
        client.classify(text)
    assert err.value.status == 400 and err.value.code == "not_an_image" and "notes.txt" in err.value.message
    with pytest.raises(ServiceError) as err:
        client.classify(cifar_test_images()[0], top_k=11)
    assert err.value.status == 400 and err.value.code == "invalid_top_k"
    with pytest.raises(TypeError, match="cannot send a int"):
        client.classify(42)
    assert client.classify(cifar_test_images()[0]).label in CLASSES  # still answering


def test_unreachable_url_is_named_in_the_error():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=1, backoff=0.01) as c, pytest.raises(ServiceUnreachable) as err:
        c.classify(b"x")
    assert f"{url}/classify" in str(err.value)


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of the server's script."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        self.server.calls += 1
        status, body = self.server.script.pop(0)
        if status == 0:  # no answer for `body` seconds
            time.sleep(body)
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.calls, server.script = 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


ANSWER = {"label": "cat", "index": 3, "confidence": 0.9, "top_k": [{"label": "cat", "index": 3, "probability": 0.9}],
          "model": {"name": "m", "version": "v", "runtime": "onnx", "device": "cpu"}}


def test_503_is_retried_and_a_4xx_is_not(stub):
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    stub.script = [(503, {"error": "loading", "code": "x"}), (503, {"error": "loading", "code": "x"}), (200, ANSWER)]
    with Client(url, retries=3, backoff=0.01) as c:
        assert c.classify(b"img").label == "cat"
        assert stub.calls == 3
        stub.script = [(400, {"error": "bad image", "code": "not_an_image"}), (200, ANSWER)]
        with pytest.raises(ServiceError, match="bad image"):
            c.classify(b"img")
        assert stub.calls == 4
        stub.script = [(503, {"error": "still loading", "code": "x"})] * 2
    with Client(url, retries=1, backoff=0.01) as c, pytest.raises(ServiceError) as err:
        c.classify(b"img")
    assert err.value.status == 503 and stub.calls == 6


def test_a_timeout_is_told_apart_from_a_service_that_is_not_there(stub):
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    stub.script = [(0, 1.0)]
    with Client(url, timeout=0.2, retries=0) as c, pytest.raises(ServiceUnreachable) as err:
        c.classify(b"img")
    assert err.value.timed_out
    with Client(f"http://127.0.0.1:{free_port()}", retries=0) as c, pytest.raises(ServiceUnreachable) as err:
        c.classify(b"img")
    assert not err.value.timed_out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_cli_table_json_and_exit_codes(server, onnx_probs, tmp_path):
    images = cifar_test_images()[:3]
    expected = [CLASSES[i] for i in onnx_probs(images).argmax(1)]
    ok = run_cli(*map(str, images), "--url", server.url)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "label", "conf"]
    assert [line.split()[1] for line in lines[1:]] == expected

    bad = tmp_path / "readme.txt"
    bad.write_text("hello")
    mixed = run_cli(str(images[0]), str(bad), str(tmp_path / "missing.jpg"), "--url", server.url, "--json",
                    "--top-k", "2")
    assert mixed.returncode == 1
    records = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert records[0]["label"] == expected[0] and len(records[0]["top_k"]) == 2
    assert records[1]["file"] == str(bad) and "not_an_image" in records[1]["error"]
    assert records[2]["error"] == "no such file"
    assert "2 of 3 files failed" in mixed.stderr

    url = f"http://127.0.0.1:{free_port()}"
    down = run_cli(str(images[0]), "--url", url)
    assert down.returncode == 1 and url in down.stderr and "Traceback" not in down.stderr
    usage = run_cli("--url", server.url)
    assert usage.returncode == 2 and "give image files" in usage.stderr


def test_cli_eval_matches_the_exported_model_in_process(server, onnx_probs, real_subset, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("--eval", str(real_subset / "test"), "--url", server.url, "--json", "--out", str(out),
                   "--concurrency", "4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    paths = sorted((real_subset / "test").glob("*/*.jpg"))
    truth = np.array([CLASSES.index(p.parent.name) for p in paths])
    in_process = float((onnx_probs(paths).argmax(1) == truth).mean())
    assert summary["n"] == len(paths) and summary["failed"] == 0
    assert summary["accuracy"] == pytest.approx(in_process, abs=1e-12)
    report = json.loads((out / "eval.json").read_text())
    assert sum(map(sum, report["confusion"])) == len(paths)
    assert sum(report["confusion"][i][i] for i in range(10)) == round(in_process * len(paths))
    assert Image.open(out / "confusion_matrix.png").size[0] > 300

    human = run_cli("--eval", str(real_subset), "--url", server.url, "--out", str(tmp_path / "eval2"), "--quiet")
    assert human.returncode == 0, human.stderr
    assert f"accuracy through the service: {100 * in_process:.2f}% of {len(paths)} images" in human.stdout

    not_a_split = run_cli("--eval", str(tmp_path / "nowhere"), "--url", server.url)
    assert not_a_split.returncode == 2 and "is not a folder" in not_a_split.stderr
