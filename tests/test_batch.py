"""Batch scoring (`python -m clients.batch`): inputs, the scorer against the service's answers, the Ray Data job end
to end on a small real subset with corrupt files, and what a killed job leaves."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients import Client, ServiceError
from clients.batch.cli import get_args_parser, main
from clients.batch.inputs import InputError, open_source
from clients.batch.job import SUMMARY, publish
from clients.batch.score import Scorer, output_schema
from clients.batch.summary import Tally
from conftest import CIFAR10_CLASSES, ROOT, SHARED_CIFAR, make_image_folder

CLASSES = CIFAR10_CLASSES
# What the service answers for these files, and so what the job's rows carry.
CORRUPT = {"empty.jpg": b"", "notes.png": b"this is text, not an image\n"}


def _add_bad_files(folder: Path) -> dict[str, str]:
    """A few unusable files among the images: name -> the error code the row must carry."""
    for name, data in CORRUPT.items():
        (folder / name).write_bytes(data)
    good = next(p for p in sorted(folder.iterdir()) if p.suffix == ".jpg" and p.stat().st_size)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "gone.jpg").symlink_to(folder / "no-such-file.jpg")
    return {"empty.jpg": "empty_file", "notes.png": "not_an_image", "truncated.jpg": "corrupt_image",
            "gone.jpg": "unreadable_file"}


@pytest.fixture(scope="module")
def model(bento_home) -> Path:
    return bento_home / "artifacts"


@pytest.fixture(scope="module")
def scored_folder(tmp_path_factory, real_subset) -> tuple[Path, dict[str, str]]:
    """real_subset's test split (30 images per class, symlinks) plus unusable files in two class folders."""
    root = tmp_path_factory.mktemp("batch-input") / "test"
    shutil.copytree(real_subset / "test", root, symlinks=True)
    bad = {f"{cls}/{name}": code for cls in ("cat", "ship") for name, code in _add_bad_files(root / cls).items()}
    return root, bad


def _short_tmp() -> str:
    # Ray's session folder holds unix sockets, whose paths may not pass 107 bytes: pytest's tmp_path is too deep.
    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def run_job(*argv: str, timeout: float = 300, kill_when=None) -> subprocess.CompletedProcess | None:
    """`python -m clients.batch ARGV` with a Ray of its own; every process it started (Ray's daemons and workers
    share its session) is stopped by PID afterwards. kill_when: a check polled while it runs; SIGKILL once true."""
    ray_tmp = _short_tmp()
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "clients.batch", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if kill_when is not None:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
                time.sleep(0.02)
            killed = proc.poll() is None
            for pid in _session_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            return None if killed else proc
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for pid in _session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def read_rows(out: Path) -> list[dict]:
    return pq.read_table(out).to_pylist()


# --- inputs and arguments (no engine) -------------------------------------------------------------------------


def test_a_folder_is_read_as_an_image_folder_or_a_flat_folder(tmp_path):
    folder = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=(2, 1)) / "train"
    source = open_source(folder, CLASSES)
    assert source.kind == "imagefolder" and source.labelled
    assert [(Path(p).parent.name, t) for p, t in source.rows] == [("cat", "cat"), ("cat", "cat"), ("dog", "dog"),
                                                                  ("dog", "dog")]
    flat = tmp_path / "flat"
    flat.mkdir()
    for p, _ in source.rows:
        shutil.copy(p, flat / f"{Path(p).parent.name}-{Path(p).name}")
    (flat / "readme.txt").write_text("not an image name: not listed")
    source = open_source(flat, CLASSES)
    assert source.kind == "folder" and not source.labelled and len(source.rows) == 4
    assert all(t is None for _, t in source.rows)


@pytest.mark.parametrize("case, sentence", [
    ("missing", "does not exist"),
    ("text_file", "neither a folder of images nor a .parquet table"),
    ("empty_folder", "holds no images"),
    ("unknown_class", "are not among the model's classes"),
    ("no_columns", "has neither a 'path' column"),
    ("text_image_column", "not binary"),
    ("unknown_label", "are not among the model's classes"),
    ("not_parquet", "is not a readable Parquet table"),
])
def test_inputs_that_cannot_be_scored_are_one_sentence(tmp_path, case, sentence):
    target = tmp_path / case
    if case == "text_file":
        target.write_text("hello")
    elif case == "empty_folder":
        target.mkdir()
    elif case == "unknown_class":
        target = make_image_folder(target, classes=("cat", "unicorn"), per_class=(1, 1)) / "train"
    elif case == "no_columns":
        target = tmp_path / "t.parquet"
        pq.write_table(pa.table({"file": ["a.jpg"]}), target)
    elif case == "text_image_column":
        target = tmp_path / "t.parquet"
        pq.write_table(pa.table({"image": ["a.jpg"]}), target)
    elif case == "unknown_label":
        target = tmp_path / "t.parquet"
        pq.write_table(pa.table({"path": ["a.jpg"], "true_label": ["unicorn"]}), target)
    elif case == "not_parquet":
        target = tmp_path / "t.parquet"
        target.write_text("not parquet")
    with pytest.raises(InputError, match=sentence):
        open_source(target, CLASSES)


def test_parquet_columns_are_found_by_the_names_given(tmp_path):
    table = tmp_path / "images.parquet"
    pq.write_table(pa.table({"file": ["a.jpg"], "jpeg": [b"x"], "class": ["cat"], "other": [1]}), table)
    source = open_source(table, CLASSES, path_column="file", image_column="jpeg", label_column="class")
    assert source.kind == "parquet" and source.labelled
    assert source.columns == {"jpeg": "image", "file": "path", "class": "true_label"}
    folder = tmp_path / "table"  # a folder of Parquet files is one table
    folder.mkdir()
    shutil.copy(table, folder / "part-0.parquet")
    assert open_source(folder, CLASSES, path_column="file", image_column="jpeg").kind == "parquet"


@pytest.mark.parametrize("argv, sentence", [
    (["--model", "{tmp}/nowhere"], "is not an exported model folder"),
    (["--out", "{existing}"], "exists; pass --overwrite"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--top-k", "11"], "--top-k must be from 1 to 10"),
    (["--runtime", "onnx-int8"], "has no model.int8.onnx"),
    (["--out", "{input}/scores"], "must not be the input or inside it"),
])
def test_bad_arguments_are_one_sentence_and_exit_2_before_any_engine_starts(tmp_path, bento_home, capsys, argv,
                                                                           sentence):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(bento_home / "artifacts" / "metadata.json", model)
    shutil.copy(bento_home / "artifacts" / "model.onnx", model)
    folder = make_image_folder(tmp_path / "in", classes=("cat",), per_class=(1, 1)) / "test"
    existing = tmp_path / "existing"
    existing.mkdir()
    fill = {"tmp": tmp_path, "existing": existing, "input": folder}
    argv = [a.format(**fill) for a in argv]
    base = [str(folder), "--model", str(model), "--out", str(tmp_path / "out")]
    assert main(get_args_parser().parse_args([*base, *argv])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and sentence in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_the_output_is_published_in_one_step_and_replaced_only_when_asked(tmp_path):
    out = tmp_path / "scores"
    first = tmp_path / ".scores.partial-1"
    first.mkdir()
    (first / "part-00000.parquet").write_text("first")
    publish(first, out, overwrite=False)
    assert (out / "part-00000.parquet").read_text() == "first" and not first.exists()
    second = tmp_path / ".scores.partial-2"
    second.mkdir()
    (second / "part-00000.parquet").write_text("second")
    with pytest.raises(FileExistsError, match="appeared while the job ran"):
        publish(second, out, overwrite=False)
    publish(second, out, overwrite=True)
    assert (out / "part-00000.parquet").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]  # the earlier output is gone, nothing hidden left


def test_parts_roll_over_at_rows_per_file_and_no_empty_part_follows(tmp_path, monkeypatch):
    import clients.batch.job as job

    monkeypatch.setattr(job, "ROWS_PER_FILE", 4)
    row = {"path": "a.jpg", "true_label": None, "label": "cat", "index": 3, "confidence": 0.5,
           "top_k": [{"label": "cat", "index": 3, "probability": 0.5}], "error": None, "error_message": None}
    batch = pa.Table.from_pylist([row, row], schema=output_schema(1))
    seen = []
    job._write(iter([batch] * 4), tmp_path, 1, seen.append)  # 8 rows: exactly two full parts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.read_table(p).num_rows for p in sorted(tmp_path.iterdir())] == [4, 4] and len(seen) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    job._write(iter([]), empty, 1, seen.append)
    assert [pq.read_table(p).num_rows for p in empty.iterdir()] == [0]


def test_the_tally_counts_errors_and_scores_only_labelled_usable_rows():
    rows = [("cat", 3, None, True), ("cat", 5, None, False), ("dog", 5, None, True), (None, 1, None, False),
            ("cat", None, "corrupt_image", None), ("dog", None, "empty_file", None), (None, None, "empty_file", None)]
    table = pa.table({"true_label": [r[0] for r in rows], "index": pa.array([r[1] for r in rows], pa.int32()),
                      "in_distribution": pa.array([r[3] for r in rows], pa.bool_()), "error": [r[2] for r in rows]})
    tally = Tally(CLASSES, labelled=True)
    tally.add(table.slice(0, 3))
    tally.add(table.slice(3))
    s = tally.summary()
    assert (s["images"], s["scored"], s["failed"]) == (7, 4, 3)
    assert s["errors"] == {"corrupt_image": 1, "empty_file": 2}
    assert (s["labelled"], s["correct"], s["accuracy"]) == (3, 2, 2 / 3)
    assert s["confusion"][3][3] == 1 and s["confusion"][3][5] == 1 and s["confusion"][5][5] == 1
    assert s["per_class_accuracy"]["cat"] == 0.5 and s["per_class_accuracy"]["airplane"] is None
    assert s["out_of_distribution"] == 2
    # A model exported without the OOD score: every in_distribution is null, and so is the count.
    older = Tally(CLASSES, labelled=True)
    older.add(table.set_column(2, "in_distribution", pa.nulls(len(rows), pa.bool_())))
    assert older.summary()["out_of_distribution"] is None


# --- the scorer and the job against the service -----------------------------------------------------------------


def _service_answers(server, files: list[Path]) -> dict[str, tuple]:
    """What the running service says for each file: (label, index, confidence, top_k) or the error code."""
    answers = {}
    with Client(server.url, timeout=30) as client:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue  # the service cannot be sent a file that cannot be read
            try:
                p = client.classify(data, top_k=3)
                answers[str(path)] = (p.label, p.index, p.confidence, [(s.label, s.probability) for s in p.top_k],
                                      p.ood_score, p.in_distribution)
            except ServiceError as exc:
                answers[str(path)] = exc.code
    return answers


def _assert_rows_match_the_service(rows: list[dict], service: dict[str, tuple], bad: dict[str, str], root: Path):
    for row in rows:
        name = str(Path(row["path"]).relative_to(root))
        if name in bad:
            assert row["error"] == bad[name] and row["label"] is None and row["error_message"], row
            if name.split("/")[-1] != "gone.jpg":
                assert service[row["path"]] == bad[name]  # the service's code for the same bytes
            continue
        label, index, confidence, top, ood_score, inside = service[row["path"]]
        assert (row["label"], row["index"], row["error"]) == (label, index, None)
        assert inside is not None and row["in_distribution"] == inside
        assert row["ood_score"] == pytest.approx(ood_score, abs=2e-4)
        assert row["confidence"] == pytest.approx(confidence, abs=1e-5)
        assert [(s["label"], s["probability"]) for s in row["top_k"]] == [
            (lbl, pytest.approx(p, abs=1e-5)) for lbl, p in top]
        assert row["true_label"] == name.split("/")[0]


@pytest.mark.slow
def test_the_scorer_answers_as_the_service_does(model, server, scored_folder):
    root, bad = scored_folder
    files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    scorer = Scorer(str(model))
    table = pa.table({"path": [str(p) for p in files], "true_label": [p.parent.name for p in files]})
    out = pa.concat_tables([scorer(table.slice(i, 50)) for i in range(0, table.num_rows, 50)])
    assert out.schema == output_schema(3)
    _assert_rows_match_the_service(out.to_pylist(), _service_answers(server, files), bad, root)


@pytest.mark.slow
def test_the_job_scores_a_folder_and_a_parquet_table_on_ray_like_the_service(model, server, scored_folder,
                                                                             tmp_path):
    root, bad = scored_folder
    out = tmp_path / "scores"
    proc = run_job(str(root), "--model", str(model), "--out", str(out), "--workers", "2", "--batch-size", "32",
                   "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary == json.loads((out / SUMMARY).read_text())
    rows = read_rows(out)
    files = sorted(p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != "no-such-file.jpg")
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # the input's order
    assert len(rows) == len(files) == summary["images"]
    _assert_rows_match_the_service(rows, _service_answers(server, files), bad, root)
    good = [r for r in rows if r["error"] is None]
    correct = sum(r["label"] == r["true_label"] for r in good)
    assert (summary["scored"], summary["failed"], summary["labelled"]) == (len(good), len(bad), len(good))
    assert summary["accuracy"] == correct / len(good) and summary["errors"] == {
        "corrupt_image": 2, "empty_file": 2, "not_an_image": 2, "unreadable_file": 2}
    assert (summary["format"], summary["workers"], summary["engine"].split()[0]) == ("imagefolder", 2, "ray")
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY, "part-00000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # The same images as a Parquet table of bytes (and one path-only row), labels in a column of another name:
    # the same answers, replacing the first output only because --overwrite says so.
    usable = [r for r in rows if r["error"] != "unreadable_file"]
    table = pa.table({
        "path": [r["path"] for r in usable],
        "jpeg": [Path(r["path"]).read_bytes() if i else None for i, r in enumerate(usable)],
        "class": [r["true_label"] for r in usable],
    })
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=100)
    argv = [str(tmp_path / "images.parquet"), "--model", str(model), "--out", str(out), "--image-column", "jpeg",
            "--label-column", "class", "--quiet", "--json"]
    refused = run_job(*argv)
    assert refused.returncode == 2 and "exists; pass --overwrite" in refused.stderr
    proc = run_job(*argv, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_rows(out)
    assert [(r["path"], r["label"], r["error"]) for r in again] == [(r["path"], r["label"], r["error"]) for r in usable]
    assert np.allclose([r["confidence"] or 0 for r in again], [r["confidence"] or 0 for r in usable], atol=1e-6)
    assert json.loads(proc.stdout)["format"] == "parquet"


@pytest.mark.slow
def test_a_job_killed_midway_leaves_nothing_that_looks_like_output(model, tmp_path):
    out = tmp_path / "scores"

    def writing() -> bool:
        return any(tmp_path.glob(".scores.partial-*/part-*.parquet"))

    # The 50,000 training images on one worker: the job writes for many seconds, and is killed once its first part
    # file exists.
    proc = run_job(str(SHARED_CIFAR / "train"), "--model", str(model), "--out", str(out), "--workers", "1",
                   "--batch-size", "8", "--quiet", kill_when=writing, timeout=120)
    assert proc is None, "the job finished before it could be killed"
    assert not out.exists()
    assert [p.name.startswith(".scores.partial-") for p in tmp_path.iterdir()] == [True]
