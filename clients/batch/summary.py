"""The job's summary, tallied on the driver as the answer batches arrive: counts, error codes, and accuracy with a
confusion matrix where true labels are known."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from contract.confusion import per_class_accuracy


class Tally:
    def __init__(self, classes: list[str], labelled: bool):
        self.classes, self.labelled = classes, labelled
        self.images = 0
        self.errors: Counter[str] = Counter()
        self.confusion = np.zeros((len(classes), len(classes)), np.int64)  # rows: true class, columns: predicted
        self.flagged = 0  # images the OOD score found unlike the training images
        self.ood_known = False

    def add(self, batch) -> None:
        """One answer batch (a pyarrow table of clients/batch/score.py's output_schema)."""
        import pyarrow.compute as pc

        self.images += batch.num_rows
        self.errors.update(batch["error"].drop_null().to_pylist())
        inside = batch["in_distribution"].drop_null() if "in_distribution" in batch.column_names else []
        if len(inside):
            self.ood_known = True
            self.flagged += len(inside) - int(pc.sum(inside).as_py() or 0)
        if self.labelled:
            scored = batch.filter(pc.and_(pc.is_null(batch["error"]), pc.is_valid(batch["true_label"])))
            true = pc.index_in(scored["true_label"], value_set=pc.cast(self.classes, "string"))
            np.add.at(self.confusion, (true.to_numpy(zero_copy_only=False), scored["index"].to_numpy()), 1)

    def summary(self) -> dict[str, Any]:
        failed = sum(self.errors.values())
        out: dict[str, Any] = {"images": self.images, "scored": self.images - failed, "failed": failed,
                               "errors": dict(sorted(self.errors.items())),
                               # None when the model has no OOD score (an export made before it existed)
                               "out_of_distribution": self.flagged if self.ood_known else None}
        if self.labelled:
            labelled, correct = int(self.confusion.sum()), int(np.trace(self.confusion))
            out.update({"labelled": labelled, "correct": correct, "accuracy": correct / labelled if labelled else None,
                        "classes": self.classes,
                        "per_class_accuracy": per_class_accuracy(self.confusion.tolist(), self.classes),
                        "confusion": self.confusion.tolist()})
        return out
