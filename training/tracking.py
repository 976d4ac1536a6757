"""Experiment tracking (`--track tensorboard|mlflow`): a run's config, per-epoch metrics and the final checkpoint's
provenance, written through the tool's own library so that runs (and sweeps) compare side by side where users already
look. Both are optional extras (`pip install 'cifar10-service[track]'`); only rank 0 logs.

    tensorboard  torch.utils.tensorboard.SummaryWriter into --track-uri (default <checkpoint-dir>/tensorboard):
                 scalars per epoch (loss/acc of train and validation, lr, img/s), the config and provenance as text,
                 and at the end the hyper-parameters against the test accuracy (the HPARAMS tab).
                 `tensorboard --logdir <the folder above the runs>` shows every run.
    mlflow       the MLflow client into --track-uri (default $MLFLOW_TRACKING_URI, else a local SQLite store,
                 sqlite:///mlruns/mlflow.db, artifacts beside it in mlruns/): experiment "cifar10-service", one MLflow
                 run per training run, named after --checkpoint-dir; params = the config, metrics per epoch (step =
                 epoch), tags = git commit, dataset, network, recipe; artifacts = best.pt's provenance and checksum,
                 history.json, results.md, the curves and the confusion matrix.

A resumed run continues the same record: tracking.json in the checkpoint folder names it (MLflow's run id; TensorBoard's
folder, whose events after the resumed epoch are purged).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError

KINDS = ("tensorboard", "mlflow")
EXPERIMENT = "cifar10-service"
RECORD = "tracking.json"  # in the checkpoint folder: which record a resumed run continues
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_s", "epoch_seconds")
FINAL_METRICS = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """The config as tracker parameters: scalars as they are, None as "None" (MLflow and TensorBoard's HPARAMS
    take str, int, float and bool only)."""
    return {k: ("None" if v is None else v) for k, v in config.items()}


class Tracker:
    """What a run calls: start once, epoch after each epoch, finish after best.pt is final, close at the end."""

    kind = ""

    def epoch(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, metrics: dict[str, Any], summary: dict[str, Any], best: dict[str, Any], out_dir: Path) -> None:
        raise NotImplementedError

    def close(self, status: str = "FINISHED") -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, log_dir: Path, config: dict[str, Any], provenance: dict[str, Any], start_epoch: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--track tensorboard needs the tensorboard package "
                              "(pip install 'cifar10-service[track]')") from None
        self.log_dir = log_dir
        # A resumed run drops what an interrupted one wrote after its last saved epoch.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch if start_epoch > 1 else None)
        self.config = config
        if start_epoch == 1:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
            self.writer.add_text("provenance", "```\n" + json.dumps(provenance, indent=2) + "\n```", 0)

    def epoch(self, row: dict[str, Any]) -> None:
        for name in EPOCH_METRICS:
            if row.get(name) is not None:
                group, _, what = name.partition("_") if name.startswith(("train_", "val_")) else ("run", "", name)
                self.writer.add_scalar(f"{group}/{what}", row[name], row["epoch"])
        self.writer.flush()

    def finish(self, metrics: dict[str, Any], summary: dict[str, Any], best: dict[str, Any], out_dir: Path) -> None:
        final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None}
        # run_name "." keeps the hyper-parameters in this run's folder (not a sub-folder per call).
        self.writer.add_hparams(flat_params(self.config), final, run_name=".")
        self.writer.add_text("best.pt", "```\n" + json.dumps(best, indent=2) + "\n```", summary["epochs_run"])
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": str(self.log_dir)}


class MLflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, uri: str, run_name: str, config: dict[str, Any], tags: dict[str, str],
                 run_id: Optional[str]):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--track mlflow needs the mlflow-skinny package "
                              "(pip install 'cifar10-service[track]')") from None
        self.mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                # Beside the database, not in ./mlruns of whatever folder the run started in.
                artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
        mlflow.set_experiment(EXPERIMENT)
        self.run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=run_name)
        if run_id is None:
            mlflow.log_params(flat_params(config))
            mlflow.set_tags(tags)

    def epoch(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({k: float(row[k]) for k in EPOCH_METRICS if row.get(k) is not None},
                                step=int(row["epoch"]))

    def finish(self, metrics: dict[str, Any], summary: dict[str, Any], best: dict[str, Any], out_dir: Path) -> None:
        mlflow = self.mlflow
        mlflow.log_metrics({f"final_{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None})
        mlflow.log_dict(best, "best_pt.json")
        for name in ("history.json", "results.md", "training_curves.png", "confusion_matrix.png"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name))

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "run_id": self.run.info.run_id}


def default_uri(kind: str, out_dir: Path) -> str:
    if kind == "tensorboard":
        return str(out_dir / "tensorboard")
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"


def open_tracker(kind: str, uri: Optional[str], out_dir: Path, header: dict[str, Any],
                 start_epoch: int) -> Tracker:
    """The run's tracker; a resumed run (start_epoch > 1) continues the record tracking.json names when it is of the
    same kind and place."""
    if kind not in KINDS:
        raise ConfigError(f"--track must be one of {', '.join(KINDS)}, got {kind!r}")
    uri = uri or default_uri(kind, out_dir)
    previous: dict[str, Any] = {}
    if start_epoch > 1 and (out_dir / RECORD).is_file():
        previous = json.loads((out_dir / RECORD).read_text())
        if previous.get("kind") != kind or previous.get("uri") != uri:
            previous = {}
    config, provenance = header["config"], header["provenance"]
    if kind == "tensorboard":
        Path(uri).mkdir(parents=True, exist_ok=True)
        tracker: Tracker = TensorBoardTracker(Path(uri), config, provenance, start_epoch if previous else 1)
    else:
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        dataset = provenance.get("dataset", {})
        tags = {"git_commit": str(provenance.get("git_commit")), "dataset": str(dataset.get("path")),
                "network": header["arch"], "recipe": str(config.get("recipe")), "checkpoint_dir": str(out_dir)}
        tracker = MLflowTracker(uri, out_dir.resolve().name, config, tags, previous.get("run_id"))
    (out_dir / RECORD).write_text(json.dumps(tracker.record(), indent=2) + "\n")
    return tracker
