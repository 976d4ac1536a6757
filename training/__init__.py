"""Training stage: SimpleCNN on CIFAR-10 (python -m training --help)."""
