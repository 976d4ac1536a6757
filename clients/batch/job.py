"""The batch job on Ray Data: list or read the input, score it with one Scorer per worker, write Parquet, publish.

Local mode (no address) starts a Ray instance on this machine for the job; an address (`auto`, `ray://HOST:10001`)
joins a running cluster, whose nodes must all see the model folder and the input (a shared filesystem). The answers
come back to this process, which writes them: the output path need only exist here. The output appears in one
rename, once every part and _summary.json are written: a job killed midway leaves only a hidden
`.<name>.partial-*` folder beside it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from contract.atomic import exchange
from contract.images import DEFAULT_RESIZE

from .inputs import Source
from .score import Scorer, output_schema
from .summary import Tally

# Beside the Parquet parts; the leading "_" keeps Parquet readers (pyarrow, pandas, Spark, DuckDB) from reading it.
SUMMARY = "_summary.json"
ROWS_PER_FILE = 1_000_000


@dataclass
class JobOptions:
    model_dir: Path
    out: Path
    runtime: str = "onnx"
    address: Optional[str] = None
    workers: int = 0  # 0: one per `threads` CPUs of the cluster, one CPU left for the engine's own tasks
    threads: int = 1
    batch_size: int = 256
    top_k: int = 3
    max_pixels: int = 0  # 0: the service's default
    overwrite: bool = False
    quiet: bool = False
    resize: str = DEFAULT_RESIZE


def run(source: Source, options: JobOptions, classes: list[str]) -> dict[str, Any]:
    import ray

    started = time.perf_counter()
    # Ray schedules by CPU count: the scoring workers hold one each (x threads), and the engine's own tasks (listing
    # and reading a Parquet input) need one more, or they would wait for ever behind the workers. A local Ray gets
    # that one on top of the cores (those tasks are light); on a cluster, one CPU is left out of the default workers.
    local = options.address is None
    ray.init(address=options.address, num_cpus=(os.cpu_count() or 1) + 1 if local else None,
             include_dashboard=False, log_to_driver=not options.quiet,
             logging_level=logging.ERROR if options.quiet else logging.WARNING)
    try:
        ready = time.perf_counter()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, (cpus - 1) // options.threads)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not options.quiet
        context.execution_options.preserve_order = True  # rows come out in the input's order
        if options.quiet:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        dataset = _dataset(ray, source, options.batch_size, workers)
        kwargs = {"model_dir": str(options.model_dir), "runtime": options.runtime, "threads": options.threads,
                  "top_k": options.top_k, "resize": options.resize}
        if options.max_pixels:
            kwargs["max_pixels"] = options.max_pixels
        answers = dataset.map_batches(Scorer, fn_constructor_kwargs=kwargs, batch_size=options.batch_size,
                                      batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                                      num_cpus=options.threads)
        staging = options.out.parent / f".{options.out.name}.partial-{os.getpid()}"
        staging.mkdir()
        tally = Tally(classes, source.labelled)
        try:
            _write(answers.iter_batches(batch_size=None, batch_format="pyarrow"), staging, options.top_k, tally.add)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a failed or interrupted job leaves nothing behind
            raise
        seconds, scoring = time.perf_counter() - started, time.perf_counter() - ready
        summary = tally.summary()
        summary.update({
            "input": str(source.location), "format": source.kind, "output": str(options.out),
            "model": str(options.model_dir), "runtime": options.runtime, "resize": options.resize,
            "engine": f"ray {ray.__version__}", "address": options.address or "local",
            "cpus": cpus, "workers": workers, "threads_per_worker": options.threads, "batch_size": options.batch_size,
            "seconds": round(seconds, 2), "images_per_s": round(summary["images"] / seconds, 1),
            # Without the engine's start-up (local Ray: a few seconds; a running cluster: none).
            "scoring_seconds": round(scoring, 2), "scoring_images_per_s": round(summary["images"] / scoring, 1),
        })
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        publish(staging, options.out, options.overwrite)
        return summary
    finally:
        ray.shutdown()


def _dataset(ray, source: Source, batch_size: int, workers: int):
    import pyarrow as pa

    if source.kind == "parquet":
        dataset = ray.data.read_parquet(str(source.location), columns=list(source.columns))
        # A file is one block (one worker's work) however many row groups it has: cut it into blocks of a few
        # batches, streaming, as the folder rows below are.
        return dataset.rename_columns(source.columns).repartition(target_num_rows_per_block=4 * batch_size)
    table = pa.table({"path": [p for p, _ in source.rows], "true_label": [t for _, t in source.rows]})
    # Blocks of 1 to 16 batches, at least four per worker: one block per worker would leave the others idle at the
    # end, and large blocks would hold the first answers back (they arrive, and are written, block by block).
    rows = min(16, max(1, -(-table.num_rows // (4 * workers * batch_size)))) * batch_size
    return ray.data.from_arrow([table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table])


def _write(batches, folder: Path, top_k: int, on_batch) -> None:
    """Stream the answer batches into part-00000.parquet, part-00001.parquet, ... of ROWS_PER_FILE rows. The driver
    writes: answers are ~150 bytes a row, and an engine write stage would need CPUs the scoring workers hold."""
    import pyarrow.parquet as pq

    part, writer, rows, wrote = 0, None, 0, False
    try:
        for batch in batches:
            wrote = True
            if writer is None:
                writer = pq.ParquetWriter(folder / f"part-{part:05d}.parquet", output_schema(top_k))
            writer.write_table(batch)
            on_batch(batch)
            rows += batch.num_rows
            if rows >= ROWS_PER_FILE:
                writer.close()
                part, writer, rows = part + 1, None, 0
        if not wrote:  # no rows at all: an empty table with the columns
            pq.write_table(output_schema(top_k).empty_table(), folder / f"part-{part:05d}.parquet")
    finally:
        if writer is not None:
            writer.close()


def publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Give the finished output its name in one rename (an existing one is replaced only with `overwrite`, swapped
    out in one step where the filesystem can)."""
    if not (out.exists() or out.is_symlink()):
        os.rename(staging, out)
        return
    if not overwrite:  # the command line checked before starting; another job may have written it since
        raise FileExistsError(f"{out} appeared while the job ran; its output is in {staging}")
    if out.is_dir() and not out.is_symlink() and exchange(staging, out):
        shutil.rmtree(staging)  # now the earlier output
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(staging, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
