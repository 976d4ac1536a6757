"""SimpleCNN from the design report. Imports only torch; forward returns logits."""
import torch
from torch import nn


class SimpleCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels) and a two-layer classifier head.

    Input: float [N, 3, 32, 32], already normalized. Output: logits [N, num_classes].
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
        self.classifier = nn.Sequential(
            nn.Flatten(),  # [N, 128, 4, 4] -> [N, 2048]
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features [N, 256] (after the hidden layer's ReLU): what the exported
        out-of-distribution score measures (export/ood.py)."""
        c = self.classifier
        return c[3](c[2](c[1](c[0](self.features(x)))))  # Flatten, Linear, ReLU, Dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[4](self.embed(x))
