"""Model card: every export it is given, measured side by side on the same run.

    python benchmarks/model_card.py artifacts runs/fast/art runs/airbench/art runs/ensemble/art \
        --plot docs/images/model_card.png

Per export, and per runtime (fp32 `model.onnx`, and int8 `model.int8.onnx` where the export has it):
  test accuracy and ECE (15 bins) of the served probabilities on the test split (`--images`, seeded), in ONNX Runtime;
  the corruption benchmark's mean accuracy and relative drop, read from EXPORT/corruptions.json
      (`python benchmarks/corruptions.py EXPORT --save`) while it names this graph's sha256;
  requests/s and p99 of POST /classify at 1 and 32 concurrent clients through a real `bentoml serve` of the export
      (hey, `--duration` seconds per cell; the load generator shares the machine);
  the graph's size; training minutes on the machine that trained it (best.pt's summary; an ensemble's: the sum).
A table, a plot of accuracy against served requests/s at c=32 (`--plot`), and one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import image_to_post, read_export  # noqa: E402
from corruptions import load_test_images  # noqa: E402
from local_service import LocalService, bentoml_launcher, free_port, with_project_path  # noqa: E402
from serve_load import bodies, hey  # noqa: E402

from contract.onnx_session import onnx_session  # noqa: E402
from contract.schemas import ModelMetadata  # noqa: E402
from export.calibration import ece  # noqa: E402

RUNTIMES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


def offline(graph: Path, images: np.ndarray, labels: np.ndarray, threads: int) -> dict[str, float]:
    session = onnx_session(str(graph), threads)
    # 100 images a call: a six-view graph runs 600 network inputs, which keeps ONNX Runtime's arena small.
    probs = np.concatenate([session.run(["probabilities"], {"image": images[i:i + 100]})[0]
                            for i in range(0, len(images), 100)])
    return {"accuracy": float((probs.argmax(1) == labels).mean()), "ece": ece(probs, labels)}


def corruption_figures(export: Path, meta: ModelMetadata) -> Optional[dict[str, float]]:
    saved = export / "corruptions.json"
    if not saved.is_file():
        return None
    figures = json.loads(saved.read_text())
    if figures.get("model_onnx_sha256") != meta.files.get("model.onnx"):
        return None  # measured on an earlier graph of this folder
    return {"mean_corrupted_acc": figures["mean_corrupted_acc"], "relative_drop": figures["relative_drop"],
            "images": figures["images"]}


def training_minutes(meta: ModelMetadata) -> Optional[float]:
    """Minutes of training on the machine that trained it, from the source checkpoints' summaries (None when a
    checkpoint is not at its recorded path)."""
    import torch

    paths = ([m["source_checkpoint"]["path"] for m in meta.members] if meta.members
             else [meta.source_checkpoint["path"]])
    total = 0.0
    for path in paths:
        if not Path(path).is_file():
            return None
        summary = torch.load(path, map_location="cpu", weights_only=True).get("summary") or {}
        if "train_seconds" not in summary:
            return None
        total += float(summary["train_seconds"])
    return total / 60


def served(export: Path, meta: ModelMetadata, runtime: str, body: dict, duration: float, home: Path,
           log_dir: Path) -> dict[str, float]:
    """POST /classify through `bentoml serve` of this export (copied into a scratch model store) at c=1 and c=32."""
    env = with_project_path({**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}, ROOT)
    files = [name for name in meta.files if (export / name).is_file()] + ["metadata.json"]
    tag = f"cifar10-card-{abs(hash(str(export.resolve()))) % 10**8}"
    save = ("import bentoml, shutil, sys\n"
            f"with bentoml.models.create({tag!r}) as ref:\n"
            f"    [shutil.copy2(sys.argv[1] + '/' + n, ref.path) for n in {files!r}]\n"
            "print(ref.tag)")
    done = subprocess.run([sys.executable, "-c", save, str(export)], capture_output=True, text=True, env=env,
                          check=True)
    env.update({"CIFAR10_MODEL": done.stdout.strip().splitlines()[-1], "CIFAR10_RUNTIME": runtime})
    port = free_port()
    cmd = [*bentoml_launcher(), "serve", "serving.service:CIFAR10Classifier", "--host", "127.0.0.1", "--port",
           str(port)]
    with LocalService(cmd, port, log_dir / f"{tag}-{runtime}.log", env=env, cwd=ROOT, ready_path="/readyz") as svc:
        url = svc.url + "/classify"
        hey(url, body["multipart"], 8, 1.0)  # warm-up
        one, many = hey(url, body["multipart"], 1, duration), hey(url, body["multipart"], 32, duration)
    return {"rps_c1": one["rps"], "p99_ms_c1": one["p99_ms"], "rps_c32": many["rps"], "p99_ms_c32": many["p99_ms"],
            "non_200": (one["requests"] - one["ok"]) + (many["requests"] - many["ok"])}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    points = [(row["rps_c32"], 100 * row["accuracy"], row["name"] + (" int8" if row["runtime"] == "onnx-int8" else ""),
               "s" if row["runtime"] == "onnx-int8" else "o") for row in rows if row.get("rps_c32") is not None]
    for x, y, _, marker in points:
        ax.scatter(x, y, marker=marker, s=50)
    ax.set_xscale("log")
    ax.set(xlabel="served requests/s, POST /classify, 32 clients (log scale)", ylabel="test accuracy (%)",
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.08, y=0.3)  # headroom for the labels moved up
    ax.autoscale_view()
    fig.tight_layout()
    # The SimpleCNN rows sit within a few percent of each other on both axes: each label moves up, in 11-point
    # steps, until it clears the labels already placed (display coordinates), with a leader line when moved;
    # labels of points in the right half go to their left, so they stay inside the figure.
    points_to_px = fig.dpi / 72.0
    # (left, right, baseline) of each label placed, in pixels; the markers themselves are in the way too.
    placed = [(mx - 5 * points_to_px, mx + 5 * points_to_px, my - 3 * points_to_px)
              for mx, my in (ax.transData.transform((x, y)) for x, y, _, _ in points)]
    middle = ax.transAxes.transform((0.5, 0.5))[0]
    for x, y, label, _ in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = ax.transData.transform((x, y))
        left = px > middle
        width = len(label) * 4.8 * points_to_px  # 8-point text: about 4.8 points a character
        x0 = px - 6 * points_to_px - width if left else px + 6 * points_to_px
        dy = 4.0
        while any(x0 < q1 and q0 < x0 + width and abs(py + dy * points_to_px - qy) < 11 * points_to_px
                  for q0, q1, qy in placed):
            dy += 11.0
        placed.append((x0, x0 + width, py + dy * points_to_px))
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6 if left else 6, dy), fontsize=8,
                    ha="right" if left else "left",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "alpha": 0.6} if dy > 4 else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="export folders (metadata.json, model.onnx)")
    p.add_argument("--names", nargs="+", default=None, help="a short name per export (default: folder names)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10" / "test",
                   help="the test split (default: the shared copy's)")
    p.add_argument("--images", type=int, default=10000, help="seeded test images for accuracy and ECE (default all)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load cell (default 5)")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="skip the served requests/s")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 graphs")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads offline (default: all cores)")
    p.add_argument("--plot", type=Path, default=None, help="write the accuracy vs requests/s plot here (PNG)")
    args = p.parse_args()
    names = args.names or [e.resolve().name for e in args.exports]
    if len(names) != len(args.exports):
        print("error: give one --names entry per export", file=sys.stderr)
        return 2
    metas = [read_export(export) for export in args.exports]
    if args.serve and shutil.which("hey") is None:
        print("error: hey is not installed (apt-get install hey), or pass --no-serve", file=sys.stderr)
        return 2
    if not args.data.is_dir() or args.images < 1:
        print("error: --data must be the test split and --images at least 1", file=sys.stderr)
        return 2
    images, labels = load_test_images(args.data, list(metas[0].classes), args.images, seed=0)
    scratch = Path(tempfile.mkdtemp(prefix="model-card-"))
    body = bodies(image_to_post(None), scratch)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for name, export, meta in zip(names, args.exports, metas, strict=True):
            minutes = training_minutes(meta)
            corrupted = corruption_figures(export, meta)
            for runtime, filename in RUNTIMES.items():
                if not (export / filename).is_file() or (runtime == "onnx-int8" and not args.int8):
                    continue
                row: dict[str, Any] = {"name": name, "export": str(export), "architecture": meta.architecture,
                                       "runtime": runtime, "size_mb": (export / filename).stat().st_size / 1e6,
                                       "training_minutes": minutes,
                                       **offline(export / filename, images, labels, args.threads)}
                if runtime == "onnx" and corrupted:
                    row.update({"corrupted_acc": corrupted["mean_corrupted_acc"],
                                "corruption_drop": corrupted["relative_drop"]})
                if args.serve:
                    row.update(served(export, meta, runtime, body, args.duration, scratch / "home", scratch))
                rows.append(row)
                print(f"  measured {name} ({runtime})", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def cell(value: Optional[float], fmt: str, scale: float = 1.0, unit: str = "") -> str:
        return format(scale * value, fmt) + unit if value is not None else "-"

    print(f"\nModel card: {len(images):,} test images (seed 0) from {args.data}; served on this machine "
          f"({os.cpu_count()} CPUs, shared with the load generator), hey {args.duration:g} s per cell; "
          f"{time.perf_counter() - started:.0f} s")
    print(f"{'model':<22} | {'runtime':<9} | {'acc':>6} | {'ECE':>5} | {'corrupt':>7} | {'drop':>6} | "
          f"{'req/s c1':>8} | {'p99 c1':>7} | {'req/s c32':>9} | {'p99 c32':>7} | {'MB':>5} | {'train min':>9}")
    print("-" * 133)
    for r in rows:
        print(f"{r['name']:<22} | {r['runtime']:<9} | {cell(r['accuracy'], '.2f', 100, '%'):>6} | "
              f"{cell(r['ece'], '.1f', 100, '%'):>5} | {cell(r.get('corrupted_acc'), '.1f', 100, '%'):>7} | "
              f"{cell(r.get('corruption_drop'), '.1f', 100, '%'):>6} | {cell(r.get('rps_c1'), ',.0f'):>8} | "
              f"{cell(r.get('p99_ms_c1'), '.1f'):>7} | {cell(r.get('rps_c32'), ',.0f'):>9} | "
              f"{cell(r.get('p99_ms_c32'), '.1f'):>7} | {r['size_mb']:5.1f} | {cell(r['training_minutes'], '.1f'):>9}")
    if args.plot is not None and args.serve:
        plot(rows, args.plot, f"accuracy against served speed, {len(images):,} test images, {os.cpu_count()} CPUs")
        print(f"plot: {args.plot}")
    print(json.dumps({"images": len(images), "duration_s": args.duration, "cpus": os.cpu_count(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
