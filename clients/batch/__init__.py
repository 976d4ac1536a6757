"""Batch scoring: the exported ONNX graph over a large image set, on Ray Data (`python -m clients.batch`).

Not part of the light client install: it needs the `[batch]` extra (Ray Data, pyarrow, ONNX Runtime). The modules
here import those only where they are used, so `--help` and the argument checks run without them.
"""
