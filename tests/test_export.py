"""The export stage on a checkpoint trained briefly on real CIFAR-10 images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import ROOT
from export.cli import get_args_parser, main
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def export(*argv: str) -> int:
    return main(get_args_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def checkpoint(brief_checkpoint) -> Path:
    return brief_checkpoint


@pytest.fixture(scope="module")
def shared_data():
    from conftest import SHARED_CIFAR
    if not (SHARED_CIFAR / "test").is_dir():
        pytest.skip("the shared CIFAR-10 copy is needed for 1,000+ parity images")
    return SHARED_CIFAR


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, checkpoint, shared_data) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    assert export("--checkpoint", str(checkpoint), "--out", str(out), "--data", str(shared_data),
                  "--parity-images", "1000", "--quiet") == 0
    return out


def test_artifacts_and_parity_report(artifacts):
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "explain.onnx", "explain.ts", "export_report.json", "metadata.json", "model.int8.onnx", "model.onnx",
        "model.ts", "reliability.png"]
    report = json.loads((artifacts / "export_report.json").read_text())
    assert report["images"] == 1000 and report["passed"] is True
    for name in ("torchscript", "onnxruntime"):
        entry = report["artifacts"][name]
        assert entry["max_abs_logit_diff"] <= 1e-4
        assert entry["max_abs_prob_diff"] <= 1e-4
        assert entry["top1_agreement"] == 1.0
        assert entry["accuracy"] == report["artifacts"]["eager"]["accuracy"]


def test_onnx_is_valid_and_carries_metadata(artifacts, checkpoint):
    import onnx
    model = onnx.load(str(artifacts / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = ort.InferenceSession(str(artifacts / "model.onnx")).get_modelmeta().custom_metadata_map
    ckpt = load_checkpoint(checkpoint)
    assert json.loads(props["classes"]) == ckpt.classes
    assert json.loads(props["normalization"]) == {"mean": list(ckpt.normalization.mean),
                                                  "std": list(ckpt.normalization.std)}
    assert json.loads(props["input"])["shape"] == [-1, 32, 32, 3]
    assert json.loads(props["source_checkpoint"])["sha256"] == json.loads(
        (artifacts / "metadata.json").read_text())["source_checkpoint"]["sha256"]
    assert json.loads(props["metrics"])["test_acc"] == ckpt.metrics["test_acc"]
    # The temperature baked into `probabilities` travels with the graph itself.
    temperature = json.loads((artifacts / "metadata.json").read_text())["calibration"]["temperature"]
    assert json.loads(props["calibration"])["temperature"] == temperature
    for key in ("training_config", "versions", "exported_at"):
        assert key in props


def test_graphs_take_uint8_hwc_and_match_the_trainer(artifacts, checkpoint, real_subset):
    """Normalization inside the graph gives what the trainer's evaluation computed."""
    from contract.constants import CIFAR10_MEAN, CIFAR10_STD
    from training.checkpoint import build_model
    from training.data import load_split
    from training.engine import Inference, predict_logits

    test = load_split(real_subset, "test")
    model = build_model(load_checkpoint(checkpoint)).eval()
    expected = predict_logits(model, test.images, Inference(torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)))
    session = ort.InferenceSession(str(artifacts / "model.onnx"))
    logits, probs, ood = session.run(None, {"image": test.images.numpy()})
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert ood.shape == (len(test),) and np.isfinite(ood).all()


@pytest.mark.parametrize("n", [1, 7, 64])
def test_dynamic_batch(artifacts, n):
    images = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(artifacts / "model.onnx"))
    logits, probs, ood = session.run(None, {"image": images})
    scripted = torch.jit.load(str(artifacts / "model.ts"))
    ts_logits, ts_probs, ts_ood = scripted(torch.from_numpy(images))
    assert logits.shape == probs.shape == (n, 10) == tuple(ts_logits.shape)
    assert ood.shape == (n,) == tuple(ts_ood.shape)
    assert np.abs(logits - ts_logits.detach().numpy()).max() < 1e-4
    assert np.abs(ood - ts_ood.detach().numpy()).max() < 1e-4 * max(1.0, np.abs(ood).max())


@pytest.mark.parametrize("bad", [
    np.zeros((2, 32, 32, 3), dtype=np.float32),   # wrong dtype
    np.zeros((2, 3, 32, 32), dtype=np.uint8),     # CHW instead of HWC
    np.zeros((2, 64, 64, 3), dtype=np.uint8),     # not resized
])
def test_graphs_reject_wrong_input(artifacts, bad):
    session = ort.InferenceSession(str(artifacts / "model.onnx"))
    (spec,) = session.get_inputs()
    assert spec.type == "tensor(uint8)" and spec.shape[1:] == [32, 32, 3]  # refused by the input spec itself
    with pytest.raises(Exception, match="(?i)invalid (rank|dimensions|element type|type)|unexpected input data type"):
        session.run(None, {"image": bad})
    with pytest.raises(Exception, match="image must"):
        torch.jit.load(str(artifacts / "model.ts"))(torch.from_numpy(bad))


def test_failed_parity_leaves_previous_artifacts(artifacts, checkpoint, shared_data, capsys):
    before = {p.name: p.read_bytes() for p in artifacts.iterdir()}
    # A tolerance nothing can meet stands in for a broken graph.
    assert export("--checkpoint", str(checkpoint), "--out", str(artifacts), "--data", str(shared_data),
                  "--parity-images", "1000", "--tolerance", "-1", "--no-calibration", "--no-int8", "--quiet") == 1
    assert "export rejected" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in artifacts.iterdir()} == before


@pytest.mark.parametrize("make, message", [
    (lambda p, src: None, "does not exist"),
    (lambda p, src: p.write_bytes(b"\x00" * 100), "not a readable checkpoint"),
    (lambda p, src: torch.save({**torch.load(src, weights_only=True), "arch": "ResNet18"}, p), "ResNet18"),
    (lambda p, src: torch.save({**torch.load(src, weights_only=True), "model_args": {"num_classes": 100}}, p),
     "does not fit the simplecnn network it names"),
])
def test_bad_checkpoint_exits_2_and_writes_nothing(tmp_path, checkpoint, shared_data, make, message):
    bad = tmp_path / "bad.pt"
    make(bad, checkpoint)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(bad), "--out", str(out),
                           "--data", str(shared_data)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_folder(tmp_path, checkpoint, shared_data, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert export("--checkpoint", str(checkpoint), "--out", str(blocker / "sub"), "--data", str(shared_data)) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_bentoml_store(artifacts, checkpoint, shared_data, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    # int8 and the full calibration are tested on their own; this is about the store.
    cmd = [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a"),
           "--data", str(shared_data), "--parity-images", "1000", "--calibration-images", "1000", "--no-int8",
           "--bentoml", "--quiet"]
    tags = []
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        tags.append(proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1])
    assert tags[0] != tags[1] and all(t.startswith("cifar10-simplecnn:") for t in tags)
    probe = ("import bentoml, json; m = bentoml.models.get('cifar10-simplecnn:latest'); "
             "print(json.dumps({'tag': str(m.tag), 'labels': m.info.labels, 'classes': m.info.metadata['classes'], "
             "'files': sorted(p.name for p in __import__('pathlib').Path(m.path).iterdir())}))")
    info = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                     timeout=120, check=True).stdout)
    assert info["tag"] == tags[1]
    assert info["labels"]["dataset"] == "cifar10" and len(info["classes"]) == 10
    assert {"model.onnx", "model.ts", "metadata.json"} <= set(info["files"])


def test_int8_model_is_quantized_and_agrees_with_fp32(artifacts, shared_data):
    report = json.loads((artifacts / "export_report.json").read_text())["int8"]
    assert report["ops"].get("QuantizeLinear", 0) > 0 and report["ops"].get("DequantizeLinear", 0) > 0
    assert report["ops"].get("Conv", 0) > 0 and report["test_images"] == 10000
    assert report["top1_agreement"] >= 0.97 and report["calibration"].startswith("MinMax on 1000 seeded training")
    session = ort.InferenceSession(str(artifacts / "model.int8.onnx"))
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    logits, probs = session.run(["logits", "probabilities"], {"image": x})
    assert logits.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    meta = json.loads((artifacts / "metadata.json").read_text())
    assert meta["int8"]["file"] == "model.int8.onnx" and "model.int8.onnx" in meta["files"]


def test_int8_drop_guard_refuses_and_leaves_previous_artifacts(artifacts, checkpoint, shared_data, capsys,
                                                                monkeypatch):
    import export.pipeline as pipeline

    before = {p.name: p.read_bytes() for p in artifacts.iterdir()}
    real = pipeline.check_int8

    def worse(*args, **kwargs):  # the real quantization, reported 1 point worse than it measured
        record = real(*args, **kwargs)
        return {**record, "drop_points": record["drop_points"] + 1.0}

    monkeypatch.setattr(pipeline, "check_int8", worse)
    assert export("--checkpoint", str(checkpoint), "--out", str(artifacts), "--data", str(shared_data),
                  "--parity-images", "1000", "--int8-max-drop", "0.5", "--quiet") == 1
    err = capsys.readouterr().err
    assert "export rejected" in err and "more than --int8-max-drop 0.5" in err
    assert {p.name: p.read_bytes() for p in artifacts.iterdir()} == before


def test_no_int8_skips_the_quantized_model(checkpoint, shared_data, tmp_path, monkeypatch):
    # Left by an earlier export into the same folder: gone afterwards, as metadata.json does not list them.
    out = tmp_path / "art"
    out.mkdir()
    (out / "model.int8.onnx").write_bytes(b"an older model")
    (out / "reliability.png").write_bytes(b"an older plot")
    (out / "notes.txt").write_text("not an artifact: kept")
    import export.pipeline as pipeline

    swaps: list[tuple] = []  # (what the output folder held just before, just after, swapped) per swap
    real = pipeline.exchange

    def recording_exchange(a, b):
        before = {p.name for p in Path(b).iterdir()}
        done = real(a, b)
        swaps.append((before, {p.name for p in Path(b).iterdir()}, done))
        return done

    monkeypatch.setattr(pipeline, "exchange", recording_exchange)
    assert export("--checkpoint", str(checkpoint), "--out", str(out), "--data", str(shared_data),
                  "--parity-images", "1000", "--no-int8", "--no-calibration", "--quiet") == 0
    monkeypatch.undo()
    # One swap replaced the whole folder: a reader of it saw the old files or the new ones, never a mix.
    assert len(swaps) == 1 and swaps[0][2]
    old, new, _ = swaps[0]
    assert "model.int8.onnx" in old and "model.int8.onnx" not in new and "notes.txt" in new
    assert not (out / "model.int8.onnx").exists() and not (out / "reliability.png").exists()
    assert (out / "notes.txt").read_text() == "not an artifact: kept"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["int8"] is None and meta["calibration"] is None
    assert set(meta["files"]) | {"metadata.json", "notes.txt"} == {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.export-")]  # no staging folder left


def test_the_folder_is_published_file_by_file_where_it_cannot_be_swapped(tmp_path, monkeypatch):
    # A folder with folders in it (or a mount point, a symlink) is not swapped: the files are replaced one by one,
    # an earlier export's unlisted files removed first, metadata.json last.
    import export.pipeline as pipeline

    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "model.int8.onnx").write_bytes(b"old")
    (out / "metadata.json").write_text("old")
    assert not pipeline.swappable(out)
    staging = pipeline.staging_folder(out, swap=False)
    assert staging.parent == out
    (staging / "model.onnx").write_bytes(b"new")
    (staging / "metadata.json").write_text("new")
    events: list[str] = []
    replace, unlink = os.replace, Path.unlink
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"), replace(a, b))[1])
    monkeypatch.setattr(Path, "unlink", lambda p, missing_ok=False: (events.append(f"unlink {p.name}"),
                                                                     unlink(p, missing_ok=missing_ok))[1])
    pipeline.publish(staging, out, swap=False)
    monkeypatch.undo()
    assert events[-1] == "replace metadata.json" and "unlink model.int8.onnx" in events
    assert events.index("unlink model.int8.onnx") < events.index("replace model.onnx")
    assert {p.name for p in out.iterdir()} == {"keep", "model.onnx", "metadata.json", staging.name}
    assert (out / "metadata.json").read_text() == "new"


def test_only_a_plain_folder_of_files_is_swapped_and_it_keeps_its_permissions(tmp_path):
    import stat

    import export.pipeline as pipeline

    out = tmp_path / "art"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    out.chmod(0o755)
    assert pipeline.swappable(out)
    staging = pipeline.staging_folder(out, swap=True)
    assert staging.parent == tmp_path and stat.S_IMODE(staging.stat().st_mode) == 0o755  # not mkdtemp's 0700
    (staging / "model.onnx").write_bytes(b"new")
    pipeline.publish(staging, out, swap=True)
    assert (out / "model.onnx").read_bytes() == b"new" and stat.S_IMODE(out.stat().st_mode) == 0o755
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    assert not pipeline.swappable(link)  # a swap would replace the link, not the folder it points to


def test_parity_refuses_nan_outputs_that_would_otherwise_agree():
    # A diverged checkpoint: every runtime gives NaN, argmax says 0 everywhere, and NaN > tolerance is False.
    from export.parity import compare, failures

    images, labels = np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64)
    nan = np.full((4, 10), np.nan, np.float32)
    report = compare(images, labels, {"eager": lambda x: (nan[:len(x)], nan[:len(x)]),
                                      "onnxruntime": lambda x: (nan[:len(x)], nan[:len(x)])})
    assert report["artifacts"]["onnxruntime"]["top1_agreement"] == 1.0  # what the old gates looked at
    bad = failures(report, 1e-4)
    assert any("eager: 80 NaN or infinite outputs" in b for b in bad)
    assert any("max |Δlogit| nan" in b for b in bad)
    fine = np.eye(10, dtype=np.float32)[:4]
    assert failures(compare(images, labels, {"eager": lambda x: (fine, fine), "onnxruntime": lambda x: (fine, fine)}),
                    1e-4) == []
