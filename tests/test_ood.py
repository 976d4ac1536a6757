"""The out-of-distribution score (export/ood.py): its fit against pytorch-ood's, its threshold, its graph."""
import numpy as np
import pytest
import torch

from export import ood


def _blobs(classes=3, per_class=200, dims=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dims, generator=g, dtype=torch.float64) * 4
    mix = torch.randn(dims, dims, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centers[labels] + torch.randn(len(labels), dims, generator=g, dtype=torch.float64) @ mix
    return x, labels


def test_the_block_term_is_pytorch_oods_mahalanobis_distance():
    from pytorch_ood.detector import Mahalanobis

    x, labels = _blobs()
    ours = ood.fit_gaussian(x, labels, 3).distance(x.float()).double()
    reference = Mahalanobis(None).fit_features(x.float(), labels)
    # pytorch-ood's covariance is the sum over images (not the mean) and its score half the squared distance.
    theirs = reference.predict_features(x.float()).double() * 2 * len(x)
    assert torch.allclose(ours, theirs, rtol=2e-3, atol=1e-3)


def test_channel_statistics_are_each_channels_mean_and_std():
    block = torch.randn(4, 5, 6, 7)
    stats = ood.channel_stats(block)
    assert stats.shape == (4, 10)
    assert torch.allclose(stats[:, :5], block.mean((2, 3)), atol=1e-6)
    assert torch.allclose(stats[:, 5:], block.std((2, 3), unbiased=False), atol=1e-5)


def test_a_class_without_training_images_is_refused():
    x, labels = _blobs()
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        ood.fit_gaussian(x, labels, 4)


@pytest.fixture(scope="module")
def fitted(brief_checkpoint, real_subset):
    from export.wrapper import classifier_from_checkpoint
    from training.checkpoint import load_checkpoint
    from training.data import load_split

    ckpt = load_checkpoint(brief_checkpoint)
    base = classifier_from_checkpoint(ckpt, brief_checkpoint)
    train, test = load_split(real_subset, "train"), load_split(real_subset, "test")
    held, report = test.images[:150], test.images[150:]
    return base, ood.fit("simplecnn", base, train.images, train.labels, held, report, "test half", 10), held


def test_the_threshold_passes_the_asked_share_of_held_out_images(fitted):
    _, result, held = fitted
    scores = ood.scores(result.classifier, held)
    assert float((scores <= result.record["threshold"]).double().mean()) == pytest.approx(ood.TPR, abs=1 / len(held))
    assert result.record["threshold_images"] == 150 and result.record["report_images"] == 150
    assert 0 <= result.record["false_rejection_rate"] <= 1 and result.record["blocks"] == 3


def test_noise_and_flat_colour_score_above_the_threshold(fitted):
    _, result, _ = fitted
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    flat = torch.from_numpy(np.repeat(rng.integers(0, 256, (64, 1, 1, 3), dtype=np.uint8), 32, 1).repeat(32, 2))
    # A 2-epoch model on 600 images: its statistics still set noise far apart, flat colour less so.
    for images, share in ((noise, 0.95), (flat, 0.75)):
        flagged = ood.scores(result.classifier, images) > result.record["threshold"]
        assert float(flagged.double().mean()) > share


def test_the_scored_graph_answers_as_the_plain_one_and_scripts(fitted):
    base, result, held = fitted
    with torch.no_grad():
        logits, probs = base(held[:20])
        scored = result.classifier(held[:20])
        scripted = torch.jit.script(result.classifier)(held[:20])
    assert torch.equal(scored[0], logits) and torch.equal(scored[1], probs)
    assert scored[2].shape == (20,)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(scored, scripted, strict=True))


def test_an_export_made_before_the_score_still_serves_with_in_distribution_null(bento_home, tmp_path):
    """A graph without the ood_score output and metadata without "ood" (as exported before it existed): the
    service's backend, its answer and the batch scorer say null."""
    import json
    import shutil
    from types import SimpleNamespace

    import onnx
    import pyarrow as pa

    from clients.batch.score import Scorer
    from conftest import cifar_test_images
    from contract.schemas import ModelMetadata
    from serving.backends import OnnxBackend
    from serving.handlers import answer

    old = tmp_path / "old-export"
    old.mkdir()
    onnx.utils.extract_model(str(bento_home / "artifacts" / "model.onnx"), str(old / "model.onnx"), ["image"],
                             ["logits", "probabilities"])
    meta = json.loads((bento_home / "artifacts" / "metadata.json").read_text())
    meta.pop("ood")
    (old / "metadata.json").write_text(json.dumps(meta))
    assert ModelMetadata.read(old / "metadata.json").ood is None
    shutil.copy(bento_home / "artifacts" / "explain.onnx", old / "explain.onnx")

    probs, score = OnnxBackend(old, "cpu", 1)(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 10) and score is None
    svc = SimpleNamespace(classes=meta["classes"], ood_threshold=None, model_ref={})
    body = answer(svc, probs[0], 3, score, count=False)
    assert body["ood_score"] is None and body["in_distribution"] is None
    rows = Scorer(str(old))(pa.table({"path": [str(cifar_test_images(1)[0])]})).to_pylist()
    assert rows[0]["label"] and rows[0]["ood_score"] is None and rows[0]["in_distribution"] is None
