"""--track tensorboard|mlflow: what a run logs through each library, offline into local stores, and a resumed run
continuing the same record."""
from __future__ import annotations

import json

import pytest

from conftest import interrupt_after, make_image_folder, run_training
from contract.provenance import sha256_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("tiny"), per_class=(8, 4))


def base(tiny, out, *extra):
    return ["--data", str(tiny), "--epochs", "3", "--batch-size", "8", "--checkpoint-dir", str(out), "--quiet", *extra]


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_tensorboard_gets_the_curves_the_config_and_the_final_figures(tiny, tmp_path):
    out = tmp_path / "run"
    assert run_training(*base(tiny, out, "--track", "tensorboard")) == 0
    history = json.loads((out / "history.json").read_text())
    acc, loss = scalars(out / "tensorboard", "train/loss")
    assert loss == [(h["epoch"], pytest.approx(h["train_loss"], rel=1e-6)) for h in history]
    assert [v for _, v in scalars(out / "tensorboard", "val/acc")[1]] == pytest.approx([h["val_acc"] for h in history])
    texts = acc.Tags()["tensors"]
    assert {"config/text_summary", "provenance/text_summary", "best.pt/text_summary"} <= set(texts)
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"lr": 0.001' in config and '"epochs": 3' in config
    # The hyper-parameters against the final test accuracy (TensorBoard's HPARAMS tab).
    from training.checkpoint import load_checkpoint
    test_acc = load_checkpoint(out / "best.pt").metrics["test_acc"]
    assert scalars(out / "tensorboard", "final/test_acc")[1] == [(0, pytest.approx(test_acc))]


def mlflow_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cifar10-service")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_gets_params_metrics_tags_and_best_pt_provenance(tiny, tmp_path):
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert run_training(*base(tiny, out, "--track", "mlflow", "--track-uri", uri, "--lr", "0.002")) == 0
    client, runs = mlflow_runs(uri)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lr"] == "0.002" and run.data.params["model"] == "simplecnn"
    assert run.data.tags["network"] == "simplecnn" and run.data.tags["recipe"] == "default"
    assert run.data.tags["git_commit"]
    history = json.loads((out / "history.json").read_text())
    val = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in val] == [(h["epoch"], pytest.approx(h["val_acc"])) for h in history]
    from training.checkpoint import load_checkpoint
    assert run.data.metrics["final_test_acc"] == pytest.approx(load_checkpoint(out / "best.pt").metrics["test_acc"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_pt.json", "history.json", "results.md", "training_curves.png"} <= names
    best = json.loads(open(client.download_artifacts(run.info.run_id, "best_pt.json", str(tmp_path))).read())
    assert best["sha256"] == sha256_file(out / "best.pt") and best["provenance"]["dataset"]["train_images"] == 24
    # Artifacts live beside the database, not in the folder the run started in.
    assert (tmp_path / "store" / "artifacts").is_dir()


def test_a_resumed_run_continues_its_mlflow_run(tiny, tmp_path, monkeypatch):
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    restore = interrupt_after(monkeypatch, 2)
    assert run_training(*base(tiny, out, "--track", "mlflow", "--track-uri", uri)) == 130
    restore()
    _, (killed,) = mlflow_runs(uri)
    assert killed.info.status == "KILLED"
    assert run_training("--resume", str(out / "last.pt"), "--quiet", "--track", "mlflow", "--track-uri", uri) == 0
    client, (run,) = mlflow_runs(uri)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]


def test_a_sweep_tracks_every_cell(tiny, tmp_path):
    from training.sweep import cli

    assert cli(["--lr", "1e-3", "2e-3", "--batch-size", "8", "--out", str(tmp_path / "sweep"), "--data", str(tiny),
                "--epochs", "1", "--quiet", "--track", "tensorboard"]) == 0
    cells = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "tensorboard").is_dir())
    assert cells == ["lr=0.001_bs=8", "lr=0.002_bs=8"]
    for cell in cells:
        assert len(scalars(tmp_path / "sweep" / cell / "tensorboard", "train/loss")[1]) == 1


def test_track_uri_without_track_is_one_sentence_and_exit_2(tiny, tmp_path, capsys):
    assert run_training(*base(tiny, tmp_path, "--track-uri", "x")) == 2
    err = capsys.readouterr().err
    assert "--track-uri says where --track logs: give --track tensorboard or --track mlflow too" in err
