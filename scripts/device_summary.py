"""One table of the runs scripts/device_check.sh made (each folder with a history.json), then one JSON line.

  python scripts/device_summary.py WORK_DIR
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def run_figures(folder: Path) -> dict:
    history = json.loads((folder / "history.json").read_text())
    results = (folder / "results.md").read_text() if (folder / "results.md").is_file() else ""
    test = re.search(r"Test Accuracy of best\.pt\*\*: ([\d.]+)%", results)
    device = re.search(r"\*\*Device\*\*: ([^\n]*)", results)
    speeds = sorted(h["img_s"] for h in history)
    return {
        "run": folder.name, "epochs": len(history),
        "test_acc": float(test.group(1)) if test else None,
        "median_img_s": round(speeds[len(speeds) // 2]), "train_s": round(sum(h["seconds"] for h in history), 1),
        "final_train_loss": round(history[-1]["train_loss"], 4), "device": device.group(1) if device else "",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_dir", type=Path, help="the folder holding the runs (one folder each, with history.json)")
    work = p.parse_args().work_dir
    rows = [run_figures(h.parent) for h in sorted(work.glob("*/history.json"))]
    print("| run | epochs | test acc % | median img/s | training s | final train loss | device |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['epochs']} | {r['test_acc']} | {r['median_img_s']} | {r['train_s']} | "
              f"{r['final_train_loss']} | {r['device']} |")
    print(json.dumps({"runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
