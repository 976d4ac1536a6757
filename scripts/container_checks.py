"""HTTP checks of a running cifar10-service (the container of scripts/container_smoke.sh, or any URL).

    python scripts/container_checks.py URL --data ../shared/datasets/cifar10 [--per-class 2] [--expect-device cuda]

Each check prints one line `RESULT<TAB>PASS|FAIL|SKIP<TAB>name<TAB>detail` (container_smoke.sh turns them into
its PASS/FAIL table); other lines are notes. The reference for every answer is the same model version run on
this host from the BentoML store, with the project's own decoder and ONNX Runtime backend. Exit code 0 when
every check ran (whatever they found), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clients import Client, Prediction, ServiceError  # noqa: E402
from contract.images import IMAGE_EXTENSIONS  # noqa: E402

# (name, version, files, runtime) -> (label, confidence) per file
Reference = Callable[[str, str, list[Path], str], list[tuple[str, float]]]


@dataclass(frozen=True)
class Check:
    status: str  # PASS, FAIL or SKIP
    name: str
    detail: str

    def line(self) -> str:
        return f"RESULT\t{self.status}\t{self.name}\t{self.detail}"


def sample_images(data: Path, per_class: int) -> list[tuple[str, Path]]:
    """(folder label, file): the first per_class images of each class folder of data/test."""
    out = []
    for d in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)[:per_class]
        out += [(d.name, f) for f in files]
    return out


def host_reference(home: Optional[str] = None) -> Reference:
    """The model version the service names, loaded from this host's BentoML store (home: a BENTOML_HOME)."""
    def run(name: str, version: str, files: list[Path], runtime: str = "onnx") -> list[tuple[str, float]]:
        import numpy as np

        from contract.images import decode
        from contract.schemas import ModelMetadata
        from serving.backends import OnnxBackend, OnnxInt8Backend

        if home is not None:
            model_dir = Path(home) / "models" / name / version
        else:
            import bentoml
            model_dir = Path(bentoml.models.get(f"{name}:{version}").path)
        classes = ModelMetadata.read(model_dir / "metadata.json").classes
        # The int8 graph answers differently from fp32 (by design): compare like with like. TorchScript matches
        # model.onnx within the export's parity tolerance.
        backend = OnnxInt8Backend if runtime == "onnx-int8" else OnnxBackend
        probs, _ = backend(model_dir, "cpu", 1)(np.stack([decode(f.read_bytes()) for f in files]))
        return [(classes[int(p.argmax())], float(p.max())) for p in probs]
    return run


def check_classify(client: Client, images: list[tuple[str, Path]],
                   expect_device: str) -> tuple[list[Check], list[Prediction]]:
    answers, latencies, bad = [], [], []
    for _, f in images:
        t0 = time.perf_counter()
        try:
            p = client.classify(f)
        except ServiceError as exc:
            bad.append(f"{f.name}: {exc}")
            continue
        latencies.append(time.perf_counter() - t0)
        if not (0.0 <= p.confidence <= 1.0 and p.top_k and p.model.get("runtime")):
            bad.append(f"{f.name}: malformed answer {p}")
        answers.append(p)
    if bad:
        return [Check("FAIL", "POST /classify", f"{len(bad)}/{len(images)} bad answers, first: {bad[0]}")], []
    model = answers[0].model
    latencies.sort()
    checks = [Check("PASS", "POST /classify", f"{len(images)} images: 200 + label/confidence/top_k/model; runtime "
                    f"{model['runtime']} on {model['device']}, model {model['name']}:{model['version']}, "
                    f"p50 {1000 * latencies[len(latencies) // 2]:.1f} ms")]
    if expect_device != "any":
        checks.append(Check("PASS" if model["device"] == expect_device else "FAIL", f"device {expect_device}",
                            f"model.device = {model['device']}, runtime {model['runtime']}"))
    return checks, answers


def check_agreement(images: list[tuple[str, Path]], answers: list[Prediction],
                    host: list[tuple[str, float]]) -> tuple[Check, str]:
    """(check, note): the same labels and confidences (within 1e-3) as the host's run of the same model."""
    mismatches = [f"{f.name}: service {a.label} vs host {h[0]}"
                  for (_, f), a, h in zip(images, answers, host, strict=True) if a.label != h[0]]
    max_dconf = max(abs(a.confidence - h[1]) for a, h in zip(answers, host, strict=True))
    acc_service = sum(a.label == folder for (folder, _), a in zip(images, answers, strict=True)) / len(images)
    acc_host = sum(h[0] == folder for (folder, _), h in zip(images, host, strict=True)) / len(images)
    note = f"accuracy vs folder labels: service {acc_service:.0%}, host {acc_host:.0%} ({len(images)} images)"
    if mismatches or max_dconf > 1e-3:
        return Check("FAIL", "host agreement", f"{len(mismatches)} label mismatches ({mismatches[:3]}), "
                     f"max |dconf| {max_dconf:.2e}"), note
    return Check("PASS", "host agreement", f"{len(images)}/{len(images)} labels equal to the host's ONNX Runtime "
                 f"run of the same model, max |dconfidence| {max_dconf:.1e}"), note


def check_batch(client: Client, images: list[tuple[str, Path]], answers: list[Prediction]) -> Check:
    """Images with different labels, shuffled, must come back from /classify_batch in request order."""
    pick, seen = [], set()
    for i, a in enumerate(answers):
        if a.label not in seen:
            seen.add(a.label)
            pick.append(i)
    pick = pick[:8] if len(pick) >= 3 else list(range(min(8, len(images))))
    random.Random(0).shuffle(pick)
    try:
        batch = client.classify_batch([images[i][1] for i in pick])
    except ServiceError as exc:
        return Check("FAIL", "POST /classify_batch", str(exc))
    wrong = [j for j, i in enumerate(pick) if batch[j].label != answers[i].label
             or abs(batch[j].confidence - answers[i].confidence) > 1e-4]
    if wrong:
        return Check("FAIL", "POST /classify_batch", f"positions {wrong} differ from the single answers")
    return Check("PASS", "POST /classify_batch", f"{len(pick)} images, order preserved: {[b.label for b in batch]}")


def check_refusal(client: Client, image: Path) -> list[Check]:
    """A text file as the image: a 4xx with an error code, and the service keeps answering."""
    try:
        client.classify(b"this is not an image\n")
        refused = Check("FAIL", "text upload refused", "the service answered 200 to a text file")
    except ServiceError as exc:
        ok = 400 <= exc.status < 500 and bool(exc.code)
        refused = Check("PASS" if ok else "FAIL", "text upload refused", f"{exc.status} {exc.code}: {exc.message}")
    try:
        client.classify(image)
        after = Check("PASS", "answers after refusal", "/classify 200")
    except ServiceError as exc:
        after = Check("FAIL", "answers after refusal", str(exc))
    return [refused, after]


def check_ui(client: Client) -> Check:
    try:
        page = client.web_page("/ui")
    except ServiceError as exc:
        return Check("FAIL", "web page /ui", str(exc))
    ok = "<title>CIFAR-10 classifier</title>" in page
    return Check("PASS" if ok else "FAIL", "web page /ui", f"GET /ui 200, {len(page.encode())} bytes")


def run_checks(url: str, data: Path, per_class: int = 2, expect_device: str = "any",
               reference: Optional[Reference] = None, say: Callable[[str], None] = print) -> list[Check]:
    """Every check against the service at url; `say` gets each RESULT line and note as it comes."""
    reference = reference or host_reference()
    checks: list[Check] = []

    def add(*new: Check) -> None:
        for c in new:
            checks.append(c)
            say(c.line())

    images = sample_images(data, per_class)
    with Client(url, timeout=60, retries=1) as client:
        found, answers = check_classify(client, images, expect_device)
        add(*found)
        if not answers:
            return checks
        model = answers[0].model
        try:
            host = reference(model["name"], model["version"], [f for _, f in images], model.get("runtime", "onnx"))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            add(Check("FAIL", "host agreement", f"could not run the model on the host: {exc!r}"))
        else:
            check, note = check_agreement(images, answers, host)
            add(check)
            say(f"       {note}")
        add(check_batch(client, images, answers))
        add(*check_refusal(client, images[0][1]))
        add(check_ui(client))
        info = client.model_info()
        say(f"       /model_info: tag {info.get('tag')}, serving {json.dumps(info.get('serving', {}))}")
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the running service, e.g. http://127.0.0.1:3000")
    p.add_argument("--data", type=Path, required=True, help="CIFAR-10 folder with test/<class>/*.jpg")
    p.add_argument("--per-class", type=int, default=2, help="test images per class sent to /classify (default 2)")
    p.add_argument("--expect-device", choices=["any", "cpu", "cuda"], default="any")
    args = p.parse_args(argv)
    if not (args.data / "test").is_dir() or args.per_class < 1:
        print(f"error: need --data with test/<class>/ images and a positive --per-class, got {args.data}",
              file=sys.stderr)
        return 2
    run_checks(args.url, args.data, args.per_class, args.expect_device, say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
