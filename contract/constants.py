"""Numbers and names that more than one stage must agree on."""
from __future__ import annotations

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Channel statistics from the design report, applied inside the exported graph.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
IMAGE_SIZE = 32
# Images per /classify_batch request: the service refuses more, the client splits into chunks of this.
MAX_BATCH_IMAGES = 64
# Checked from the image header, before any pixel is decoded: 40 MP is a 7,300 x 5,500 photo.
DEFAULT_MAX_PIXELS = 40_000_000
