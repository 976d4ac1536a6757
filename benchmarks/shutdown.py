"""Does a shutdown under load lose requests? SIGTERM to `bentoml serve` while hey hammers POST /classify.

  python benchmarks/shutdown.py [--repeats 5] [--workers 1 2] [--concurrency 8 32] [--after 3]

Each run: start the service (CIFAR10_MODEL's model, default config, one fresh server per run) on a free port;
`hey -disable-keepalive` (a new connection per request) at the given concurrency; SIGTERM to the service's
main process only (as `docker stop` and Kubernetes send it) --after seconds in; hey runs on for a few seconds
after the service is gone. A request is lost when it was sent on an accepted connection and got no answer
("connection reset by peer", EOF, a timeout); "connection refused" after the listener closed is not a loss.
Also records the service's exit code and how long it took to exit. --graceful off runs BentoML's and uvicorn's
own shutdown (CIFAR10_GRACEFUL_SHUTDOWN=off), the behaviour before serving/platform/shutdown.py.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import image_to_post  # noqa: E402
from local_service import LocalService, with_project_path  # noqa: E402

BOUNDARY = "cifar10shutdownboundary"


def error_counts(hey_output: str) -> dict[str, int]:
    """hey's 'Error distribution' section: {message: count}."""
    counts: dict[str, int] = {}
    if "Error distribution:" not in hey_output:
        return counts
    for line in hey_output.split("Error distribution:", 1)[1].splitlines():
        m = re.match(r"\s*\[(\d+)\]\s+(.*)", line)
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    return counts


def one_run(env: dict, workers: int, concurrency: int, after: float, body: Path, log_dir: Path) -> dict:
    srv = LocalService.bentoml("serving.service:CIFAR10Classifier", env={**env, "CIFAR10_WORKERS": str(workers)},
                               cwd=ROOT, log_dir=log_dir, timeout=180)
    try:
        hey = subprocess.Popen(["hey", "-disable-keepalive", "-z", f"{after + 8}s", "-c", str(concurrency), "-m",
                                "POST", "-D", str(body), "-T", f"multipart/form-data; boundary={BOUNDARY}",
                                f"{srv.url}/classify"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(after)
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=120)
        exit_s = time.monotonic() - sent
        out, _ = hey.communicate(timeout=120)
    finally:
        srv.stop()
    statuses: dict[int, int] = {}
    for m in re.finditer(r"\[(\d{3})\]\s+(\d+) responses", out):
        statuses[int(m.group(1))] = int(m.group(2))
    errors = error_counts(out)
    refused = sum(n for msg, n in errors.items() if "connection refused" in msg)
    lost = sum(n for msg, n in errors.items() if "connection refused" not in msg)
    return {"workers": workers, "concurrency": concurrency, "ok": statuses.get(200, 0),
            "non_200": sum(n for s, n in statuses.items() if s != 200), "refused": refused, "lost": lost,
            "lost_kinds": {m: n for m, n in errors.items() if "connection refused" not in m},
            "exit_code": code, "exit_seconds": round(exit_s, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--after", type=float, default=3.0, help="seconds of load before SIGTERM (default 3)")
    p.add_argument("--graceful", choices=["on", "off"], default="on")
    p.add_argument("--bentoml-home", default=os.environ.get("BENTOML_HOME"))
    p.add_argument("--image", default=None, help="image to POST (default: a CIFAR-10 test JPEG)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if shutil.which("hey") is None:
        print("error: hey is not installed (apt-get install hey)", file=sys.stderr)
        return 2
    image = image_to_post(args.image)
    tmp = Path(tempfile.mkdtemp(prefix="shutdown-"))
    atexit.register(shutil.rmtree, tmp, True)  # also when a run fails half-way
    body = tmp / "body"
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n")
    body.write_bytes(head.encode() + image.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    env = with_project_path({**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR10_GRACEFUL_SHUTDOWN": args.graceful},
                            ROOT)
    if args.bentoml_home:
        env["BENTOML_HOME"] = args.bentoml_home
    runs = []
    for workers in args.workers:
        for c in args.concurrency:
            for i in range(args.repeats):
                r = one_run(env, workers, c, args.after, body, tmp)
                r["repeat"] = i + 1
                runs.append(r)
                print(f"workers {workers} c={c} run {i + 1}: {r['ok']} answered, {r['lost']} lost {r['lost_kinds']}, "
                      f"{r['refused']} refused, exit {r['exit_code']} after {r['exit_seconds']} s", flush=True)
    print(f"\nSIGTERM after {args.after:g} s of hey -disable-keepalive; graceful shutdown {args.graceful}")
    print(f"{'workers':>7} | {'conc':>4} | {'runs':>4} | {'answered':>8} | {'lost':>4} | {'refused':>7} | "
          f"{'exit codes':<10} | {'exit s (max)':>12}")
    print("-" * 80)
    summary = {}
    for workers in args.workers:
        for c in args.concurrency:
            rs = [r for r in runs if r["workers"] == workers and r["concurrency"] == c]
            codes = sorted({r["exit_code"] for r in rs})
            row = {"runs": len(rs), "answered": sum(r["ok"] for r in rs), "lost": sum(r["lost"] for r in rs),
                   "refused": sum(r["refused"] for r in rs), "exit_codes": codes,
                   "max_exit_seconds": max(r["exit_seconds"] for r in rs)}
            summary[f"w{workers}_c{c}"] = row
            print(f"{workers:>7} | {c:>4} | {row['runs']:>4} | {row['answered']:>8} | {row['lost']:>4} | "
                  f"{row['refused']:>7} | {str(codes):<10} | {row['max_exit_seconds']:>12.2f}")
    print(json.dumps({"graceful": args.graceful, "after_s": args.after, "cells": summary,
                      "lost_total": sum(r["lost"] for r in runs), "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
