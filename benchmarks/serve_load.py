"""HTTP load test of POST /classify: this BentoML service (several configurations) vs a minimal peer.

  python benchmarks/serve_load.py [--duration 5] [--concurrency 1 8 32 64] [--model cifar10-simplecnn:latest]
  python benchmarks/serve_load.py --only default raw json int8 peer --concurrency 1 32

Needs `hey` (Debian package `hey`) and the model in the BentoML store. Every server runs on a free loopback
port, one at a time, and is stopped (by its process group) after its rows. Rows:
  default     service, default config, multipart body (the documented default)
  raw         the same server, the image as the raw body (Content-Type: image/jpeg)
  json        the same server, JSON {"image": "<base64>"}
  explainmix  the same server, /classify measured while `hey -c 2` keeps POST /explain busy beside it
  nolane      CIFAR10_FAST_LANE=off (every request through BentoML's middleware)
  nobatch     CIFAR10_BATCHING=off
  accesslog   CIFAR10_ACCESS_LOG=on
  workers2    CIFAR10_WORKERS=2
  int8        CIFAR10_RUNTIME=onnx-int8 (model.int8.onnx)
  apikeys     CIFAR10_API_KEYS set (three keys), every request with `Authorization: Bearer <the last one>`
  peer        benchmarks/serve_peer.py (Starlette + uvicorn + onnxruntime, one process, same model file)
Latency percentiles come from hey's per-request CSV; requests/s is requests completed / duration.
"""
from __future__ import annotations

import argparse
import atexit
import base64
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

from common import image_to_post  # noqa: E402
from local_service import LocalService, bentoml_launcher, free_port, with_project_path  # noqa: E402

BOUNDARY = "cifar10benchboundary"
# key -> (label, server environment or None for the peer, body kind, path)
ROWS = {
    "default": ("service, multipart (default)", {}, "multipart", "/classify"),
    "raw": ("service, raw image body", {}, "raw", "/classify"),
    "json": ("service, JSON base64 body", {}, "json", "/classify"),
    "explainmix": ("service, beside /explain load", {}, "multipart", "/classify"),
    "nolane": ("service, fast lane off", {"CIFAR10_FAST_LANE": "off"}, "multipart", "/classify"),
    "nobatch": ("service, batching off", {"CIFAR10_BATCHING": "off"}, "multipart", "/classify"),
    "accesslog": ("service, access log on", {"CIFAR10_ACCESS_LOG": "on"}, "multipart", "/classify"),
    "workers2": ("service, 2 workers", {"CIFAR10_WORKERS": "2"}, "multipart", "/classify"),
    "int8": ("service, onnx-int8 runtime", {"CIFAR10_RUNTIME": "onnx-int8"}, "multipart", "/classify"),
    # Three keys, the request sends the last: every accepted key is compared (serving/auth.py).
    "apikeys": ("service, API keys on", {"CIFAR10_API_KEYS": "bench-key-1,bench-key-2,bench-key-3"}, "multipart",
                "/classify"),
    "peer": ("peer (starlette+uvicorn+ort)", None, "multipart", "/classify"),
}


def bodies(image: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """(body file, content type) per body kind."""
    data = image.read_bytes()
    multipart = tmp / "multipart"
    multipart.write_bytes(
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{image.name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode())
    raw = tmp / "raw"
    raw.write_bytes(data)
    js = tmp / "json"
    js.write_text(json.dumps({"image": base64.b64encode(data).decode()}))
    return {"multipart": (multipart, f"multipart/form-data; boundary={BOUNDARY}"),
            "raw": (raw, "image/jpeg"), "json": (js, "application/json")}


def hey(url: str, body: tuple[Path, str], concurrency: int, duration: float, headers: tuple[str, ...] = ()) -> dict:
    out = subprocess.run(["hey", "-z", f"{duration}s", "-c", str(concurrency), "-m", "POST", "-D", str(body[0]),
                          "-T", body[1], *(a for h in headers for a in ("-H", h)), "-o", "csv", url],
                         capture_output=True, text=True, timeout=duration + 60)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    lat = np.array([float(r["response-time"]) for r in rows]) * 1000
    ok = sum(r["status-code"] == "200" for r in rows)
    return {"requests": len(rows), "ok": ok, "rps": len(rows) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan")}


def measure(key: str, url: str, body: dict, concurrency: list[int], duration: float) -> dict[int, dict]:
    kind, path = ROWS[key][2], ROWS[key][3]
    keys = (ROWS[key][1] or {}).get("CIFAR10_API_KEYS")
    headers = (f"Authorization: Bearer {keys.split(',')[-1]}",) if keys else ()
    hey(url + path, body[kind], 8, 1.0, headers)  # warm-up
    if key != "explainmix":
        return {c: hey(url + path, body[kind], c, duration, headers) for c in concurrency}
    results = {}
    for c in concurrency:  # two clients asking for explanations the whole time, beside the measured ones
        side = subprocess.Popen(["hey", "-z", f"{duration + 1}s", "-c", "2", "-m", "POST", "-D",
                                 str(body["multipart"][0]), "-T", body["multipart"][1], url + "/explain"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        results[c] = hey(url + path, body[kind], c, duration)
        out, _ = side.communicate(timeout=duration + 60)
        done = next((line.split()[1] for line in out.splitlines() if line.strip().startswith("Requests/sec:")), "?")
        results[c]["explain_rps"] = float(done) if done != "?" else None
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--bentoml-home", default=os.environ.get("BENTOML_HOME"))
    p.add_argument("--model", default=os.environ.get("CIFAR10_MODEL", "cifar10-simplecnn:latest"),
                   help="model tag in the store (default $CIFAR10_MODEL or cifar10-simplecnn:latest)")
    p.add_argument("--image", default=None, help="image to POST (default: a CIFAR-10 test JPEG)")
    p.add_argument("--only", nargs="+", default=None, choices=list(ROWS), help="run only these rows")
    args = p.parse_args()
    if shutil.which("hey") is None:
        print("error: hey is not installed (apt-get install hey)", file=sys.stderr)
        return 2
    env = with_project_path({**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR10_MODEL": args.model}, ROOT)
    if args.bentoml_home:
        env["BENTOML_HOME"] = args.bentoml_home
    lookup = f"import bentoml; print(bentoml.models.get({args.model!r}).path)"
    model_dir = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, env=env)
    if model_dir.returncode != 0:
        print(f"error: no {args.model} in the BentoML store; run python -m export ... --bentoml", file=sys.stderr)
        return 2
    image = image_to_post(args.image)
    if args.duration <= 0:
        print("error: --duration must be positive", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    atexit.register(shutil.rmtree, tmp, True)  # also when a run fails half-way
    body = bodies(image, tmp)
    wanted = [k for k in ROWS if not args.only or k in args.only]
    # One server per distinct environment; rows that share it (default, raw, json, explainmix) run back to back.
    servers: dict[str, list[str]] = {}
    for key in wanted:
        servers.setdefault(json.dumps(ROWS[key][1]), []).append(key)
    results: dict[str, dict[int, dict]] = {}
    for env_key, keys in servers.items():
        extra = json.loads(env_key)
        port = free_port()
        if extra is None:
            cmd = [sys.executable, "-m", "uvicorn", "benchmarks.serve_peer:app", "--host", "127.0.0.1", "--port",
                   str(port), "--no-access-log", "--log-level", "warning"]
            server_env = {**env, "CIFAR10_PEER_MODEL_DIR": model_dir.stdout.strip()}
        else:
            cmd = [*bentoml_launcher(), "serve", "serving.service:CIFAR10Classifier", "--host", "127.0.0.1", "--port",
                   str(port)]
            server_env = {**env, **extra}
        ready = None if extra is None else "/readyz"  # the peer has no readiness route: its port opening will do
        with LocalService(cmd, port, tmp / f"{keys[0]}.log", env=server_env, cwd=ROOT, ready_path=ready) as svc:
            for key in keys:
                results[key] = measure(key, svc.url, body, args.concurrency, args.duration)
    print(f"\nPOST /classify with {args.model}, {image.name} ({image.stat().st_size} bytes), hey -z {args.duration}s; "
          f"{os.cpu_count()} CPUs shared with the load generator")
    print(f"{'server':<32} | {'conc':>4} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-200':>7}")
    print("-" * 80)
    figures: dict[str, object] = {"model": args.model}
    for key, rows in results.items():
        for c, r in rows.items():
            extra = f"  (/explain beside: {r['explain_rps']:.1f} req/s)" if r.get("explain_rps") is not None else ""
            print(f"{ROWS[key][0]:<32} | {c:>4} | {r['rps']:>8,.0f} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} | "
                  f"{r['requests'] - r['ok']:>7}{extra}")
            figures[f"{key}_rps_c{c}"] = round(r["rps"], 1)
            figures[f"{key}_p50_ms_c{c}"] = round(r["p50_ms"], 3)
            figures[f"{key}_p99_ms_c{c}"] = round(r["p99_ms"], 3)
            if r.get("explain_rps") is not None:
                figures[f"{key}_explain_rps_c{c}"] = r["explain_rps"]
    if "default_rps_c32" in figures and "peer_rps_c32" in figures:
        figures["ratio_c32"] = round(figures["default_rps_c32"] / figures["peer_rps_c32"], 3)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
