"""Export stage: a checkpoint -> TorchScript + ONNX artifacts that carry their own preprocessing."""
