"""The service's own batching, API and OpenAPI against BentoML's typed `@bentoml.api(batchable=True)` endpoints.

  python benchmarks/native_batching.py [--duration 5] [--concurrency 1 32] [--rounds 2] [--servers ours native front]

Servers (benchmarks/native_service.py has the two native ones), each started on a free loopback port, one at a
time, in rounds (ours, native, front, ours, native, front, ...: the alternation shows the noise):
  ours     bentoml serve serving.service:CIFAR10Classifier   (serving/app.py, batching.py, openapi.py; defaults)
  native   bentoml serve benchmarks.native_service:CIFAR10Native        (one batchable endpoint, list of PIL images)
  front    bentoml serve benchmarks.native_service:CIFAR10NativeFront   (plain endpoint -> batchable one in a
           second service, bentoml.depends: the documented way to keep per-request parameters)
  plain    bentoml serve benchmarks.native_service:CIFAR10NativePlain   (native's endpoint, batchable off: what
           BentoML's request handling costs without its dispatcher; not in the default set)
Every server gets the same multipart body (`image` = one CIFAR-10 test JPEG); `hey -z DURATION -c C` per cell.
Then (unless --no-behaviour) each server is started once more and sent the bad inputs of docs/serving.md's
refusal table (status and body recorded), a load run with bad requests mixed in (do good requests fail beside
them?), and its /docs.json is read. During that pass the servers have HTTP_PROXY set to a recorder on loopback, so
a text `image` field fetched as a URL shows up as a request there (nothing leaves the machine).
Needs `hey` and the model in the BentoML store ($BENTOML_HOME). Prints tables and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import atexit
import base64
import csv
import datetime as dt
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve_load  # noqa: E402  (its bodies(): the same request bodies as the load test)
from common import image_to_post  # noqa: E402
from local_service import LocalService, bentoml_launcher, free_port, with_project_path  # noqa: E402

from serving.errors import CODES  # noqa: E402

TARGETS = {
    "ours": "serving.service:CIFAR10Classifier",
    "native": "benchmarks.native_service:CIFAR10Native",
    "front": "benchmarks.native_service:CIFAR10NativeFront",
    "plain": "benchmarks.native_service:CIFAR10NativePlain",
}
LABELS = {"ours": "ours (mounted app + MicroBatcher)", "native": "native batchable (list[Image])",
          "front": "native front + batchable (depends)", "plain": "native, batchable off (I/O alone)"}
MAX_UPLOAD_MB = 10  # the service's default CIFAR10_MAX_UPLOAD_MB
URL = "http://example.com/x.jpg"


def hey(url: str, body: tuple[Path, str], concurrency: int, duration: float) -> dict:
    """serve_load.hey's measurement (hey's per-request CSV; requests/s = completed / duration), plus the statuses."""
    out = subprocess.run(["hey", "-z", f"{duration}s", "-c", str(concurrency), "-m", "POST", "-D", str(body[0]),
                          "-T", body[1], "-o", "csv", url], capture_output=True, text=True, timeout=duration + 60)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    lat = np.array([float(r["response-time"]) for r in rows]) * 1000
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status-code"]] = statuses.get(r["status-code"], 0) + 1
    return {"requests": len(rows), "ok": statuses.get("200", 0), "statuses": statuses, "rps": len(rows) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan")}


def loadavg() -> float:
    """The 1-minute load average (other work on the machine shows here: the benchmark's own is about 2 at c=32)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def serve_cmd(key: str, port: int) -> list[str]:
    return [*bentoml_launcher(), "serve", TARGETS[key], "--host", "127.0.0.1", "--port", str(port)]


# ---------------------------------------------------------------------------------------------------- load
def load_rounds(args, env: dict, body: dict, tmp: Path) -> list[dict]:
    runs = []
    for rnd in range(1, args.rounds + 1):
        for key in args.servers:
            port = free_port()
            cmd = serve_cmd(key, port)
            started, load_before = now(), loadavg()
            with LocalService(cmd, port, tmp / f"load-{key}-{rnd}.log", env=env, cwd=ROOT, timeout=180) as svc:
                hey(svc.url + "/classify", body["multipart"], 8, 1.0)  # warm-up (and the cork's training)
                cells = {}
                for c in args.concurrency:
                    cells[c] = hey(svc.url + "/classify", body["multipart"], c, args.duration)
                    cells[c]["started"] = now()
            runs.append({"server": key, "round": rnd, "started": started, "cmd": " ".join(cmd[1:]), "cells": cells,
                         "loadavg_before": load_before, "loadavg_after": loadavg()})
            print(f"  round {rnd} {key:<6} {started} (load {load_before:.2f} -> {loadavg():.2f}): " + ", ".join(
                f"c={c} {r['rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms ({r['requests'] - r['ok']} non-200)"
                for c, r in cells.items()), flush=True)
    return runs


# ----------------------------------------------------------------------------------------------- behaviour
class ProxyRecorder:
    """A loopback 'HTTP proxy' that records each request line it is sent and answers 502: a server that fetches
    a URL through $HTTP_PROXY shows it here."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(4096)
                    self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "nativeprobe") -> bytes:
    """(name, filename or None for a text field, content type or None, bytes) -> a multipart/form-data body."""
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def png(width: int, height: int, noise: bool = False) -> bytes:
    from PIL import Image

    if noise:
        arr = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
    else:
        im = Image.new("RGB", (width, height), (30, 120, 200))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1 if noise else 9)
    return buf.getvalue()


def probes(image: Path) -> list[tuple[str, str, bytes]]:
    """(what, content type, body) for each bad (or borderline) input."""
    jpeg = image.read_bytes()
    mp = "multipart/form-data; boundary=nativeprobe"
    big = png(2100, 1800, noise=True)  # a real image of about 11 MB: over the 10 MiB limit
    assert len(big) > MAX_UPLOAD_MB * 2**20, len(big)
    at_limit, over_limit = png(8000, 5000), png(8000, 5001)  # 40,000,000 and 40,008,000 pixels
    return [
        ("good JPEG (reference)", mp, multipart([("image", image.name, "image/jpeg", jpeg)])),
        ("text file", mp, multipart([("image", "notes.txt", "text/plain", b"this is not an image\n" * 20)])),
        ("empty file", mp, multipart([("image", "empty.jpg", "image/jpeg", b"")])),
        ("truncated JPEG (first half: header cut)", mp,
         multipart([("image", "half.jpg", "image/jpeg", jpeg[:len(jpeg) // 2])])),
        ("truncated JPEG (last 200 bytes cut: header intact)", mp,
         multipart([("image", "cut.jpg", "image/jpeg", jpeg[:-200])])),
        (f"image over {MAX_UPLOAD_MB} MiB ({len(big) / 2**20:.1f} MiB PNG, 2100x1800)", mp,
         multipart([("image", "big.png", "image/png", big)])),
        (f"8000x5000 PNG = 40.0 MP, at the limit ({len(at_limit):,} B)", mp,
         multipart([("image", "at.png", "image/png", at_limit)])),
        (f"8000x5001 PNG = 40.008 MP, over the limit ({len(over_limit):,} B)", mp,
         multipart([("image", "over.png", "image/png", over_limit)])),
        (f"text field image={URL}", mp, multipart([("image", None, None, URL.encode())])),
        ("malformed JSON", "application/json", b'{"image": '),
        ("top_k=0", mp, multipart([("image", image.name, "image/jpeg", jpeg), ("top_k", None, None, b"0")])),
        ("two images on /classify", mp, multipart([("image", "a.jpg", "image/jpeg", jpeg),
                                                   ("image", "b.jpg", "image/jpeg", jpeg)])),
        ("JPEG part declared image/jpg", mp, multipart([("image", image.name, "image/jpg", jpeg)])),
        ("raw body, Content-Type image/jpeg", "image/jpeg", jpeg),
        ('JSON {"image": "<base64>"}', "application/json",
         json.dumps({"image": base64.b64encode(jpeg).decode()}).encode()),
        ('JSON {"image": ["<base64>"]}', "application/json",
         json.dumps({"image": [base64.b64encode(jpeg).decode()]}).encode()),
    ]


def post(url: str, ctype: str, body: bytes, timeout: float = 60) -> tuple[int, str, float]:
    """POST with curl (which reads an answer sent before the whole body went out, as a 413 is)."""
    with tempfile.NamedTemporaryFile(prefix="native-probe-") as f:
        f.write(body)
        f.flush()
        t0 = time.perf_counter()
        r = subprocess.run(["curl", "-sS", "-m", str(timeout), "-H", f"Content-Type: {ctype}", "--data-binary",
                            f"@{f.name}", "-w", "\n%{http_code}", url], capture_output=True, timeout=timeout + 10)
        secs = time.perf_counter() - t0
    text, _, code = r.stdout.decode("utf-8", "replace").rpartition("\n")
    if r.returncode != 0 and not text:
        text = f"(curl exit {r.returncode}: {r.stderr.decode(errors='replace').strip()})"
    return int(code) if code.isdigit() else 0, text, secs


def shape(status: int, text: str) -> str:
    """Whether a refusal body is the documented {"error": sentence, "code": known code}."""
    if status == 200:
        return "answer"
    try:
        doc = json.loads(text)
    except ValueError:
        return "not JSON"
    if isinstance(doc, dict) and set(doc) == {"error", "code"} and doc["code"] in CODES:
        return "ours"
    return "other"


def mixed_load(url: str, good: tuple[Path, str], bad: bytes, seconds: float = 3.0) -> dict:
    """hey -c 16 with good images while one client sends bad ones back to back: do good requests fail?"""
    out: dict[str, Any] = {"bad_sent": 0, "bad_status": {}}
    stop = time.monotonic() + seconds

    def bad_client() -> None:
        time.sleep(0.3)
        while time.monotonic() < stop - 0.3:
            status, _, _ = post(url, "multipart/form-data; boundary=nativeprobe", bad, timeout=10)
            out["bad_sent"] += 1
            out["bad_status"][status] = out["bad_status"].get(status, 0) + 1

    th = threading.Thread(target=bad_client)
    th.start()
    r = hey(url, good, 16, seconds)
    th.join()
    out.update({"good_sent": r["requests"], "good_failed": r["requests"] - r["ok"], "good_status": r["statuses"]})
    return out


def openapi_summary(doc: dict) -> dict:
    """What a /docs.json says about POST /classify: request encodings, answer statuses, which error codes it names."""
    op = doc.get("paths", {}).get("/classify", {}).get("post", {})
    text = json.dumps(doc)
    return {
        "openapi": doc.get("openapi"),
        "request_content_types": sorted(op.get("requestBody", {}).get("content", {})),
        "response_statuses": sorted(op.get("responses", {})),
        "error_codes_named": sorted(c for c in CODES if f'"{c}"' in text or f"`{c}`" in text),
        "paths": sorted(doc.get("paths", {})),
    }


def behaviour(args, env: dict, image: Path, body: dict, tmp: Path) -> dict:
    proxy = ProxyRecorder()
    # Only outbound fetches go to the recorder; the front's calls to its dependency stay direct.
    penv = {**env, "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}", "http_proxy": f"http://127.0.0.1:{proxy.port}",
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "https_proxy": f"http://127.0.0.1:{proxy.port}",
            "NO_PROXY": "127.0.0.1,localhost,::1", "no_proxy": "127.0.0.1,localhost,::1"}
    cases = probes(image)
    jpeg = image.read_bytes()
    bads = {"text file": multipart([("image", "notes.txt", "text/plain", b"this is not an image\n" * 20)]),
            "truncated JPEG": multipart([("image", "cut.jpg", "image/jpeg", jpeg[:-200])])}  # fails in decoding
    result: dict[str, Any] = {}
    for key in args.servers:
        port = free_port()
        cmd = serve_cmd(key, port)
        rows = []
        with LocalService(cmd, port, tmp / f"behaviour-{key}.log", env=penv, cwd=ROOT, timeout=180) as svc:
            started = now()
            for what, ctype, data in cases:
                before = len(proxy.lines)
                status, text, secs = post(svc.url + "/classify", ctype, data)
                rows.append({"case": what, "status": status, "body": text, "shape": shape(status, text),
                             "seconds": round(secs, 3), "fetched": proxy.lines[before:]})
            alive = post(svc.url + "/classify", body["multipart"][1], body["multipart"][0].read_bytes())[0]
            mixed = {what: mixed_load(svc.url + "/classify", body["multipart"], data) for what, data in bads.items()}
            docs = json.loads(post_get(svc.url + "/docs.json"))
            if args.docs_dir:
                Path(args.docs_dir).mkdir(parents=True, exist_ok=True)
                (Path(args.docs_dir) / f"docs-{key}.json").write_text(json.dumps(docs, indent=1))
        result[key] = {"started": started, "cmd": " ".join(cmd[1:]), "rows": rows, "still_answers": alive,
                       "mixed": mixed, "openapi": openapi_summary(docs), "docs": docs}
    proxy.close()
    return result


def post_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


# ---------------------------------------------------------------------------------------------------- report
def median_cells(runs: list[dict], key: str, c: int) -> dict:
    cells = [r["cells"][c] for r in runs if r["server"] == key]
    return {m: statistics.median(x[m] for x in cells) for m in ("rps", "p50_ms", "p99_ms")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=2, help="times each server is measured, alternating (ABAB)")
    p.add_argument("--servers", nargs="+", default=["ours", "native", "front"], choices=list(TARGETS))
    p.add_argument("--image", default=None, help="image to POST (default: a CIFAR-10 test JPEG)")
    p.add_argument("--no-behaviour", action="store_true", help="only the load rounds")
    p.add_argument("--log-dir", default=None, help="keep the servers' logs in this folder")
    p.add_argument("--docs-dir", default=None, help="write each server's /docs.json into this folder")
    args = p.parse_args()
    if shutil.which("hey") is None:
        print("error: hey is not installed (apt-get install hey)", file=sys.stderr)
        return 2
    image = image_to_post(args.image)
    env = with_project_path({**os.environ, "BENTOML_DO_NOT_TRACK": "True"}, ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="native-batching-"))
    atexit.register(shutil.rmtree, tmp, True)
    body = serve_load.bodies(image, tmp)
    logs = Path(args.log_dir) if args.log_dir else tmp
    logs.mkdir(parents=True, exist_ok=True)
    import bentoml

    print(f"{now()}: bentoml {bentoml.__version__}, {os.cpu_count()} CPUs shared with hey; POST /classify, "
          f"multipart 'image' = {image} ({image.stat().st_size} B), hey -z {args.duration:g}s per cell", flush=True)
    runs = load_rounds(args, env, body, logs)
    beh = {} if args.no_behaviour else behaviour(args, env, image, body, logs)

    print(f"\n{'run':<4} | {'server':<36} | {'started (UTC)':<23} | {'c':>3} | {'req/s':>7} | {'p50 ms':>7} | "
          f"{'p99 ms':>7} | non-200")
    print("-" * 112)
    for i, r in enumerate(runs, 1):
        for c, x in r["cells"].items():
            print(f"{i:<4} | {LABELS[r['server']]:<36} | {r['started']:<23} | {c:>3} | {x['rps']:>7,.0f} | "
                  f"{x['p50_ms']:>7.2f} | {x['p99_ms']:>7.2f} | {x['requests'] - x['ok']}"
                  + (f" {x['statuses']}" if x['requests'] != x['ok'] else ""))
    figures: dict[str, Any] = {"bentoml": bentoml.__version__, "image": str(image), "duration_s": args.duration,
                               "runs": [{k: v for k, v in r.items()} for r in runs]}
    print("\nmedians over rounds, and native / ours:")
    for c in args.concurrency if runs else []:
        base = median_cells(runs, "ours", c) if "ours" in args.servers else None
        for key in args.servers:
            m = median_cells(runs, key, c)
            figures[f"{key}_c{c}"] = {k: round(v, 2) for k, v in m.items()}
            rel = ""
            if base and key != "ours":
                rel = f"  ({m['rps'] / base['rps']:.2f}x req/s, {m['p99_ms'] / base['p99_ms']:.2f}x p99)"
                figures[f"{key}_vs_ours_c{c}"] = {"rps": round(m["rps"] / base["rps"], 3),
                                                  "p99": round(m["p99_ms"] / base["p99_ms"], 3)}
            print(f"  c={c:<3} {LABELS[key]:<36} {m['rps']:>7,.0f} req/s  p50 {m['p50_ms']:6.2f}  "
                  f"p99 {m['p99_ms']:6.2f} ms{rel}")

    if beh:
        print("\nbehaviour (POST /classify): status, body shape (ours = {error, code} with a documented code), body")
        for i, (what, _, _) in enumerate(probes(image)):
            print(f"\n  {what}")
            for key in args.servers:
                row = beh[key]["rows"][i]
                fetched = f"  FETCHED: {row['fetched']}" if row["fetched"] else ""
                text = row["body"] if len(row["body"]) <= 300 else row["body"][:300] + "..."
                print(f"    {key:<6} {row['status']} [{row['shape']}] {row['seconds']:.2f}s {text}{fetched}")
        print("\nmixed load: hey -c 16 good images for 3 s while one client posts a bad one back to back")
        for key in args.servers:
            for what, m in beh[key]["mixed"].items():
                print(f"  {key:<6} bad = {what:<15} good: {m['good_sent']} sent, {m['good_failed']} failed "
                      f"{m['good_status']}; bad: {m['bad_sent']} sent, statuses {m['bad_status']}")
        print("\n/docs.json, POST /classify:")
        for key in args.servers:
            o = beh[key]["openapi"]
            print(f"  {key:<6} request bodies {o['request_content_types']}; answers {o['response_statuses']}; "
                  f"{len(o['error_codes_named'])}/{len(CODES)} error codes named")
        figures["behaviour"] = {k: {"rows": [{"case": r["case"], "status": r["status"], "shape": r["shape"],
                                              "body": r["body"][:400], "fetched": r["fetched"]} for r in v["rows"]],
                                    "mixed": v["mixed"], "openapi": v["openapi"], "started": v["started"],
                                    "cmd": v["cmd"]} for k, v in beh.items()}
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
