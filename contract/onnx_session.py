"""The one place an ONNX Runtime session is made, for the export's checks and for the service, so that both run
the exported graphs with the same settings. onnxruntime is imported here only when a session is made."""
from __future__ import annotations

from typing import Sequence


def onnx_session(path: str, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",),
                 spinning: bool = True):
    """An onnxruntime.InferenceSession of the graph at `path`.

    threads: intra-op threads (0: ONNX Runtime's default, one per core); ONNX Runtime sizes its pool from the
    machine, not from BentoML's worker count, so a service passes its share. One inter-op thread: the graphs run
    sequentially. spinning=False keeps idle pool threads from spinning, which would steal the CPU the service's
    event loop needs to parse the next request.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=list(providers))
