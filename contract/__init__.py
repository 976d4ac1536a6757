"""What crosses the stages (training -> export -> serving -> clients), and nothing else. No torch.

- constants:  the CIFAR-10 class names, the normalization, the input size, the service's limits
- images:     the image-decoding contract (decode, prepare, file extensions, resize filter)
- schemas:    the two hand-offs as typed, versioned records: the training checkpoint and metadata.json
- provenance: the git commit and file checksums that travel with every artifact
- cpus:       how many CPUs this process may use (threads for torch and ONNX Runtime)
- reports:    the confusion-matrix figure drawn by training and by `cifar10-classify --eval`

Every stage may import this package; it imports none of them.
"""
