"""HTTP load test of POST /classify: this BentoML service vs a minimal Starlette + uvicorn peer.

  python benchmarks/serve_load.py [--duration 5] [--concurrency 1 8 32 64] [--bentoml-home DIR]

Needs `hey` (Debian package `hey`) and cifar10-simplecnn:latest in the BentoML store. Every server
runs on a free loopback port, one at a time, and is stopped (by PID) after its rows. Rows:
  service (default config)      - bentoml serve, the defaults a user gets
  service fast lane off         - CIFAR10_FAST_LANE=off (every request through BentoML's middleware)
  service batching off          - CIFAR10_BATCHING=off
  service access log on         - CIFAR10_ACCESS_LOG=on
  service 2 workers             - CIFAR10_WORKERS=2
  peer (starlette+uvicorn+ort)  - benchmarks/serve_peer.py, one process
Latency percentiles come from hey's per-request CSV; requests/s is requests completed / duration.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.local import LocalService, free_port  # noqa: E402

BOUNDARY = "cifar10benchboundary"


def hey(url: str, body: Path, concurrency: int, duration: float) -> dict:
    out = subprocess.run(["hey", "-z", f"{duration}s", "-c", str(concurrency), "-m", "POST", "-D", str(body),
                          "-T", f"multipart/form-data; boundary={BOUNDARY}", "-o", "csv", url],
                         capture_output=True, text=True, timeout=duration + 60)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    lat = np.array([float(r["response-time"]) for r in rows]) * 1000
    ok = sum(r["status-code"] == "200" for r in rows)
    return {"requests": len(rows), "ok": ok, "rps": len(rows) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--bentoml-home", default=os.environ.get("BENTOML_HOME"))
    p.add_argument("--image", default=None, help="image to POST (default: a CIFAR-10 test JPEG)")
    p.add_argument("--only", nargs="+", default=None,
                   help="run only these rows (default, nolane, nobatch, accesslog, workers2, peer)")
    args = p.parse_args()
    if shutil.which("hey") is None:
        print("error: hey is not installed (apt-get install hey)", file=sys.stderr)
        return 2
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT)}
    if args.bentoml_home:
        env["BENTOML_HOME"] = args.bentoml_home
    model_dir = subprocess.run([sys.executable, "-c", "import bentoml; print(bentoml.models.get("
                                "'cifar10-simplecnn:latest').path)"], capture_output=True, text=True, env=env)
    if model_dir.returncode != 0:
        print("error: no cifar10-simplecnn:latest in the BentoML store; run python -m export ... --bentoml",
              file=sys.stderr)
        return 2
    image = Path(args.image) if args.image else next(
        (ROOT.parent / "shared" / "datasets" / "cifar10" / "test" / "cat").glob("*.jpg"), None)
    if image is None or not image.is_file():
        print("error: pass --image FILE", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    body = tmp / "body"
    body.write_bytes(
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{image.name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + image.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    bentoml = str(Path(sys.executable).parent / "bentoml")
    configs = {
        "default": ("service (default config)", {}),
        "nolane": ("service fast lane off", {"CIFAR10_FAST_LANE": "off"}),
        "nobatch": ("service batching off", {"CIFAR10_BATCHING": "off"}),
        "accesslog": ("service access log on", {"CIFAR10_ACCESS_LOG": "on"}),
        "workers2": ("service 2 workers", {"CIFAR10_WORKERS": "2"}),
        "peer": ("peer (starlette+uvicorn+ort)", None),
    }
    results: dict[str, dict[int, dict]] = {}
    for key, (_label, extra) in configs.items():
        if args.only and key not in args.only:
            continue
        port = free_port()
        if extra is None:
            cmd = [sys.executable, "-m", "uvicorn", "benchmarks.serve_peer:app", "--host", "127.0.0.1", "--port",
                   str(port), "--no-access-log", "--log-level", "warning"]
            server_env = {**env, "CIFAR10_PEER_MODEL_DIR": model_dir.stdout.strip()}
        else:
            cmd = [bentoml, "serve", "serving.service:CIFAR10Classifier", "--host", "127.0.0.1", "--port", str(port)]
            server_env = {**env, **extra}
        ready = None if extra is None else "/readyz"  # the peer has no readiness route: its port opening will do
        with LocalService(cmd, port, tmp / f"{key}.log", env=server_env, cwd=ROOT, ready_path=ready) as svc:
            url = f"{svc.url}/classify"
            hey(url, body, 8, 1.0)  # warm-up
            results[key] = {c: hey(url, body, c, args.duration) for c in args.concurrency}
    print(f"\nPOST /classify, {image.name} ({image.stat().st_size} bytes), hey -z {args.duration}s; "
          f"{os.cpu_count()} CPUs shared with the load generator")
    print(f"{'server':<30} | {'conc':>4} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-200':>7}")
    print("-" * 78)
    for key, rows in results.items():
        for c, r in rows.items():
            print(f"{configs[key][0]:<30} | {c:>4} | {r['rps']:>8,.0f} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} | "
                  f"{r['requests'] - r['ok']:>7}")
    figures = {}
    for key, rows in results.items():
        name = {"default": "service", "nolane": "service_nolane", "nobatch": "service_nobatch",
                "accesslog": "service_log", "workers2": "service_2w", "peer": "peer"}[key]
        for c, r in rows.items():
            figures[f"{name}_rps_c{c}"] = round(r["rps"], 1)
            figures[f"{name}_p50_ms_c{c}"] = round(r["p50_ms"], 3)
            figures[f"{name}_p99_ms_c{c}"] = round(r["p99_ms"], 3)
    if "service_rps_c32" in figures and "peer_rps_c32" in figures:
        figures["ratio_c32"] = round(figures["service_rps_c32"] / figures["peer_rps_c32"], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
