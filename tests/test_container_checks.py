"""scripts/container_checks.py (the HTTP half of the container smoke test) against a real `bentoml serve`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from clients import Prediction, Score
from conftest import ROOT, SHARED_CIFAR

spec = importlib.util.spec_from_file_location("container_checks", ROOT / "scripts" / "container_checks.py")
checks = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = checks  # dataclasses look their module up there
spec.loader.exec_module(checks)


@pytest.fixture(scope="module")
def results(server, bento_home):
    lines = []
    found = checks.run_checks(server.url, SHARED_CIFAR, per_class=1, reference=checks.host_reference(str(bento_home)),
                              say=lines.append)
    return found, lines


def test_every_check_passes_against_the_served_model(results):
    found, lines = results
    assert [c.name for c in found] == ["POST /classify", "host agreement", "POST /classify_batch",
                                       "text upload refused", "answers after refusal", "web page /ui"]
    assert all(c.status == "PASS" for c in found), [c for c in found if c.status != "PASS"]
    # The smoke script reads these lines: one tab-separated RESULT line per check.
    assert sum(line.startswith("RESULT\tPASS\t") for line in lines) == len(found)
    assert any("/model_info: tag cifar10-simplecnn:" in line for line in lines)


def _answer(label: str, confidence: float) -> Prediction:
    return Prediction(label, 0, confidence, (Score(label, 0, confidence),), {"name": "m", "version": "v"})


def test_a_label_that_differs_from_the_host_fails():
    images = [("cat", Path("a.jpg")), ("dog", Path("b.jpg"))]
    answers = [_answer("cat", 0.9), _answer("dog", 0.8)]
    assert checks.check_agreement(images, answers, [("cat", 0.9), ("dog", 0.8)])[0].status == "PASS"
    failed, _ = checks.check_agreement(images, answers, [("cat", 0.9), ("frog", 0.8)])
    assert failed.status == "FAIL" and "1 label mismatches" in failed.detail
    assert checks.check_agreement(images, answers, [("cat", 0.9), ("dog", 0.7)])[0].status == "FAIL"


def test_a_service_that_refuses_everything_fails_the_classify_check(tmp_path):
    import http.server
    import json
    import threading

    class Refuser(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"error": "no", "code": "broken"}).encode()
            self.send_response(500)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuser)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        found = checks.run_checks(url, SHARED_CIFAR, per_class=1, say=lambda s: None)
    finally:
        httpd.shutdown()
    assert [(c.status, c.name) for c in found] == [("FAIL", "POST /classify")]
    assert "10/10 bad answers" in found[0].detail and "broken" in found[0].detail
