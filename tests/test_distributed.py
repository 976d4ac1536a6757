"""`python -m training` under torchrun: two CPU processes (gloo) on a small real subset of CIFAR-10."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from local_service import free_port

from conftest import ROOT
from contract.constants import CIFAR10_MEAN, CIFAR10_STD
from training import distributed
from training.checkpoint import load_checkpoint
from training.cli import get_args_parser, main
from training.data import load_split
from training.engine import Inference, evaluate
from training.models import SimpleCNN

pytestmark = pytest.mark.slow
OUTPUTS = {"best.pt", "last.pt", "history.json", "training_curves.png", "confusion_matrix.png", "results.md"}


def _env(tmp_path_factory) -> dict[str, str]:
    # One thread per rank (the machine is shared); the session's dataset cache, not ~/.cache. No GPU: these are
    # the two-CPU-process (gloo) runs on any machine (two ranks on a one-GPU machine are refused, by design).
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "CIFAR10_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "dataset-cache")}


def torchrun_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "training", *argv]


def torchrun(env: dict, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(*argv)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out (or interrupted): take the ranks down too, not only torchrun
            _kill_job(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's rank processes (each runs in a session of its own, out of reach of a killpg of
    torchrun's group) by PID, then torchrun's process group."""
    try:
        ranks = _children(proc.pid)
    except OSError:
        ranks = []
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _history(path: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "img_s", "epoch_seconds")}
            for h in json.loads((path / "history.json").read_text())]


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(real_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp2")
    proc = torchrun(_env(tmp_path_factory), "--data", str(real_subset), "--epochs", "2", "--batch-size", "32",
                    "--checkpoint-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_two_ranks_write_one_set_of_outputs(ddp_run):
    out, proc = ddp_run
    assert {p.name for p in out.iterdir()} == OUTPUTS
    # Only rank 0 reports: one header, one line per epoch, one summary.
    assert proc.stdout.count("2 processes (gloo) x batch 32 = global batch 64") == 1
    assert proc.stdout.count("epoch   1/2") == 1 and proc.stdout.count("done:") == 1
    assert "x 2 processes (global batch 64)" in (out / "results.md").read_text()


def test_every_epoch_counts_each_image_once_across_ranks(ddp_run):
    out, _ = ddp_run
    history = json.loads((out / "history.json").read_text())
    assert [h["samples"] for h in history] == [600, 600]  # 600 images, 300 per rank
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert load_checkpoint(out / "last.pt").provenance["processes"] == 2


def test_checkpoints_load_into_a_plain_simplecnn(ddp_run):
    out, _ = ddp_run
    for name in ("best.pt", "last.pt"):
        SimpleCNN(num_classes=10).load_state_dict(_state(out / name), strict=True)


def test_sharded_test_accuracy_equals_one_process_evaluating_best_pt(ddp_run, real_subset):
    out, _ = ddp_run
    ckpt = load_checkpoint(out / "best.pt")
    model = SimpleCNN(num_classes=10)
    model.load_state_dict(ckpt.model)
    test = load_split(real_subset, "test")
    alone = evaluate(model, test.images, test.labels, Inference(torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)))
    assert ckpt.metrics["test_images"] == 300
    assert ckpt.metrics["test_acc"] == pytest.approx(alone["acc"], abs=1e-9)
    assert ckpt.metrics["test_loss"] == pytest.approx(alone["loss"], rel=1e-4)
    best_epoch = max(json.loads((out / "history.json").read_text()), key=lambda h: h["val_acc"])["epoch"]
    assert ckpt.metrics["epoch"] == best_epoch


def test_resume_under_two_ranks_reaches_the_uninterrupted_result(ddp_run, real_subset, tmp_path, tmp_path_factory):
    out, _ = ddp_run
    env = _env(tmp_path_factory)
    first = torchrun(env, "--data", str(real_subset), "--epochs", "1", "--batch-size", "32", "--checkpoint-dir",
                     str(tmp_path), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(env, "--resume", str(tmp_path / "last.pt"), "--epochs", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _history(tmp_path) == _history(out)
    for name in ("last.pt", "best.pt"):
        a, b = _state(tmp_path / name), _state(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_with_another_process_count_is_refused(ddp_run, capsys):
    out, _ = ddp_run
    assert main(get_args_parser().parse_args(["--resume", str(out / "last.pt"), "--quiet"])) == 2
    assert "was trained by 2 process(es); resume it with the same number (this run has 1)" in capsys.readouterr().err


def test_a_killed_rank_ends_the_job_promptly(real_subset, tmp_path, tmp_path_factory):
    # 301 images: each rank trains on 150 per epoch, the odd one is skipped (a different one each epoch).
    cmd = torchrun_cmd("--data", str(real_subset), "--epochs", "1000", "--limit-train", "301", "--batch-size", "32",
                       "--checkpoint-dir", str(tmp_path), "--quiet")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path_factory), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "history.json").exists():
            time.sleep(0.1)
        assert (tmp_path / "history.json").exists(), "no epoch finished in time"
        assert json.loads((tmp_path / "history.json").read_text())[0]["samples"] == 300
        ranks = {pid: _env_of(pid).get("RANK") for pid in _children(proc.pid)}
        workers = list(ranks)
        victim = next(pid for pid, rank in ranks.items() if rank == "1")
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        took = time.time() - killed_at
    finally:
        if proc.poll() is None:
            _kill_job(proc)
    assert proc.returncode != 0 and took < 60
    assert "exitcode  : -9" in err and "rank      : 1" in err  # torchrun names the rank that died
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a rank outlived the job"


def _children(pid: int) -> list[int]:
    return [int(c) for task in os.listdir(f"/proc/{pid}/task")
            for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]


def _env_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def test_a_bad_data_folder_stops_both_ranks_with_one_message(tmp_path, tmp_path_factory):
    proc = torchrun(_env(tmp_path_factory), "--data", str(tmp_path / "missing"), "--epochs", "1",
                    "--checkpoint-dir", str(tmp_path / "out"), timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: rank 0: dataset folder") == 1 and "does not exist" in proc.stderr
    assert f"{os.sep}training{os.sep}" not in proc.stderr  # no traceback from the training code
    # torchrun's report: rank 0 failed as for bad input and rank 1, waiting for that, was stopped by torchrun.
    root_cause = proc.stderr.split("Root Cause")[1]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause
    assert "exitcode  : -15" in proc.stderr.split("Root Cause")[0]


@pytest.mark.parametrize("rank, says", [(0, True), (1, False)])
def test_sync_bn_on_the_cpu_is_refused_before_the_ranks_connect(rank, says, real_subset, tmp_path, monkeypatch,
                                                                capsys):
    # What rank 0 and rank 1 of `torchrun --nproc_per_node=2 -m training --sync-bn` do on a CPU machine.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "PEER_REPORT_GRACE_S", 0.0)
    argv = ["--data", str(real_subset), "--sync-bn", "--no-cuda", "--checkpoint-dir", str(tmp_path), "--quiet"]
    assert main(get_args_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    message = "error: rank 0: --sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU\n"
    assert err == (message if says else "")


def test_a_rank_whose_peer_never_comes_times_out(real_subset, tmp_path, tmp_path_factory):
    # Rank 0 of a two-process job started alone: --dist-timeout bounds its wait for rank 1.
    env = {**_env(tmp_path_factory), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "training", "--data", str(real_subset), "--checkpoint-dir",
                           str(tmp_path), "--dist-timeout", "3", "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and time.time() - start < 60
    assert proc.stderr.startswith("error: rank 0: another process of this job stopped answering")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


# Two "nodes" on this machine: two torchrun launchers of one process each, meeting through the c10d rendezvous,
# as two hosts would (docs/scale.md: the multi-host command differs only in the endpoint's address).
def _two_node_cmd(port: int, *argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=cifar10-test-{port}",
            "--max-restarts=0", "-m", "training", *argv]


def _start_two_nodes(env: dict, logs: Path, *argv: str) -> list[subprocess.Popen]:
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(_two_node_cmd(port, *argv), cwd=ROOT, env=env, start_new_session=True,
                             stdout=open(logs / f"node{n}.out", "w"), stderr=open(logs / f"node{n}.err", "w"))
            for n in range(2)]


def _wait_all(nodes: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    try:
        return [node.wait(timeout=max(1.0, deadline - time.time())) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                _kill_job(node)


def test_two_nodes_write_the_checkpoint_of_one_node_with_two_processes(ddp_run, real_subset, tmp_path,
                                                                        tmp_path_factory):
    out, _ = ddp_run
    nodes = _start_two_nodes(_env(tmp_path_factory), tmp_path / "logs", "--data", str(real_subset), "--epochs", "2",
                             "--batch-size", "32", "--checkpoint-dir", str(tmp_path / "run"))
    codes = _wait_all(nodes, timeout=300)
    assert codes == [0, 0], [(tmp_path / "logs" / f"node{n}.err").read_text()[-2000:] for n in range(2)]
    assert {p.name for p in (tmp_path / "run").iterdir()} == OUTPUTS
    assert _history(tmp_path / "run") == _history(out)
    for name in ("last.pt", "best.pt"):
        a, b = _state(tmp_path / "run" / name), _state(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_dead_node_stops_the_other_and_the_run_resumes(ddp_run, real_subset, tmp_path, tmp_path_factory):
    out, _ = ddp_run
    env, run = _env(tmp_path_factory), tmp_path / "run"
    nodes = _start_two_nodes(env, tmp_path / "logs", "--data", str(real_subset), "--epochs", "2", "--batch-size",
                             "32", "--checkpoint-dir", str(run), "--quiet")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (run / "last.pt").exists():  # written before the first epoch
            time.sleep(0.05)
        assert (run / "last.pt").exists(), "the two nodes never started training"
        _kill_job(nodes[1])  # the second machine dies: its launcher and its process, SIGKILL
        killed_at = time.time()
        code = nodes[0].wait(timeout=120)
        took = time.time() - killed_at
    finally:
        _wait_all(nodes, timeout=1)
    err = (tmp_path / "logs" / "node0.err").read_text()
    assert code != 0 and took < 120
    assert "another process of this job stopped answering, so this one stops too" in err, err[-3000:]
    assert not (run / "best.pt").exists()  # it died in the first epoch
    # Both machines back: --resume continues from last.pt and reaches the uninterrupted run's result.
    nodes = _start_two_nodes(env, tmp_path / "logs-resumed", "--resume", str(run / "last.pt"), "--quiet")
    codes = _wait_all(nodes, timeout=300)
    assert codes == [0, 0], [(tmp_path / "logs-resumed" / f"node{n}.err").read_text()[-2000:] for n in range(2)]
    assert _history(run) == _history(out)
    for name in ("last.pt", "best.pt"):
        a, b = _state(run / name), _state(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
