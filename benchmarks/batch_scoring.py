"""Batch scoring on Ray Data (`python -m clients.batch`, local mode) against `cifar10-classify --eval` through one
service, on the same images with the same model, one after the other (never side by side), alternating for --rounds.

    python benchmarks/batch_scoring.py                         # the 10,000 test images, cifar10-simplecnn:latest
    python benchmarks/batch_scoring.py --data ../shared/datasets/cifar10/train --rounds 1

For each: wall seconds and images/s (the batch job with and without its Ray start-up; the eval with the service
already up and warm), accuracy, and peak memory (the sum of resident memory over every process of the job: the
driver, Ray's daemons and workers; for the eval, the service's processes and the client; shared pages, such as
Ray's object store, count once per process that touched them). The model's offline test
accuracy (metadata.json) is printed beside them. Prints a table, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402
from local_service import LocalService, bentoml_launcher, free_port, with_project_path  # noqa: E402


class PeakMemory:
    """The largest sum of RSS over the given processes and all their descendants, sampled every 0.1 s."""

    def __init__(self, roots: set[int]):
        self.roots, self.peak = set(roots), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.1):
            parent, rss = {}, {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        # /proc/PID/stat: "pid (comm) state ppid ...": comm may hold spaces, so split after ")"
                        parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                        rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * page
                    except (OSError, ValueError, IndexError):
                        pass
            tree, grew = set(self.roots) & set(rss), True
            while grew:
                more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
                tree |= more
                grew = bool(more)
            self.peak = max(self.peak, sum(rss[pid] for pid in tree if pid in rss))


def run_batch(data: Path, model_dir: Path, out: Path, env: dict) -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [sys.executable, "-m", "clients.batch", str(data), "--model", str(model_dir), "--out", str(out), "--quiet",
           "--json", "--overwrite"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RAY_TMPDIR": ray_tmp}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    with PeakMemory({proc.pid}) as memory:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the batch job failed:\n{stderr[-3000:]}")
    s = json.loads(stdout)
    return {"wall_s": wall, "images": s["images"], "images_per_s": s["images"] / wall,
            "scoring_images_per_s": s["scoring_images_per_s"], "accuracy": s["accuracy"], "failed": s["failed"],
            "peak_mib": memory.peak / 2**20, "workers": s["workers"]}


def run_eval(data: Path, env: dict, tmp: Path) -> dict:
    port = free_port()
    cmd = [*bentoml_launcher(), "serve", "serving.service:CIFAR10Classifier", "--host", "127.0.0.1",
           "--port", str(port)]
    with LocalService(cmd, port, tmp / "service.log", env=env, cwd=ROOT, ready_path="/readyz") as svc:
        client = [str(Path(sys.executable).parent / "cifar10-classify"), "--eval", str(data), "--url", svc.url,
                  "--quiet", "--out", str(tmp / "eval")]
        started = time.perf_counter()
        proc = subprocess.Popen(client, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with PeakMemory({svc.proc.pid, proc.pid}) as memory:
            _, stderr = proc.communicate()
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: cifar10-classify --eval failed:\n{stderr[-3000:]}")
    r = json.loads((tmp / "eval" / "eval.json").read_text())
    return {"wall_s": wall, "images": r["n"] + r["failed"], "images_per_s": (r["n"] + r["failed"]) / wall,
            "accuracy": r["accuracy"], "failed": r["failed"], "peak_mib": memory.peak / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or ROOT.parent / "shared" /
                   "datasets" / "cifar10") / "test", help="an ImageFolder split (default: the shared test split)")
    p.add_argument("--bentoml-home", default=os.environ.get("BENTOML_HOME"))
    p.add_argument("--model", default=os.environ.get("CIFAR10_MODEL", "cifar10-simplecnn:latest"),
                   help="model tag in the store (default $CIFAR10_MODEL or cifar10-simplecnn:latest)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both (default 2)")
    args = p.parse_args()
    env = with_project_path({**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR10_MODEL": args.model,
                             "RAY_USAGE_STATS_ENABLED": "0"}, ROOT)
    if args.bentoml_home:
        env["BENTOML_HOME"] = args.bentoml_home
    if not args.data.is_dir():
        print(f"error: {args.data} is not an ImageFolder split; pass --data", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    lookup = f"import bentoml; print(bentoml.models.get({args.model!r}).path)"
    found = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, env=env)
    if found.returncode != 0:
        print(f"error: no {args.model} in the BentoML store; run python -m export ... --bentoml", file=sys.stderr)
        return 2
    model_dir = Path(found.stdout.strip())
    offline = json.loads((model_dir / "metadata.json").read_text())["metrics"].get("test_acc")
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    rows: list[tuple[str, int, dict]] = []
    try:
        for r in range(1, args.rounds + 1):
            rows.append(("cifar10-classify --eval, 1 service", r, run_eval(args.data, env, tmp)))
            rows.append(("python -m clients.batch (Ray, local)", r, run_batch(args.data, model_dir, tmp / "out", env)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.data} with {args.model} ({model_dir.name}); {os.cpu_count()} CPUs; "
          f"offline test accuracy (metadata.json): {offline}")
    print(f"{'job':<38} | {'round':>5} | {'images':>7} | {'wall s':>7} | {'img/s':>7} | {'img/s no start':>14} | "
          f"{'accuracy':>8} | {'failed':>6} | {'peak MiB':>8}")
    print("-" * 125)
    for name, r, m in rows:
        steady = f"{m['scoring_images_per_s']:>14,.0f}" if "scoring_images_per_s" in m else f"{'-':>14}"
        print(f"{name:<38} | {r:>5} | {m['images']:>7,} | {m['wall_s']:>7.2f} | {m['images_per_s']:>7,.0f} | "
              f"{steady} | {100 * m['accuracy']:>7.2f}% | {m['failed']:>6} | {m['peak_mib']:>8,.0f}")
    figures: dict[str, object] = {"model": args.model, "data": str(args.data), "offline_test_acc": offline}
    for key, name in (("eval", "cifar10-classify"), ("batch", "python -m clients.batch")):
        mine = [m for n, _, m in rows if n.startswith(name)]
        figures[f"{key}_images_per_s"] = [round(m["images_per_s"], 1) for m in mine]
        figures[f"{key}_accuracy"] = [m["accuracy"] for m in mine]
        figures[f"{key}_peak_mib"] = [round(m["peak_mib"]) for m in mine]
    figures["batch_images_per_s_without_startup"] = [m["scoring_images_per_s"] for n, _, m in rows if "batch" in n]
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
