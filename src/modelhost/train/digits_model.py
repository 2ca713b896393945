"""DigitsCNN: a small convolutional classifier for 28x28 grayscale digits.

    (N, 1, 28, 28) → conv 3x3 (32) → ReLU → max-pool 2 → (N, 32, 13, 13)
                   → conv 3x3 (64) → ReLU → max-pool 2 → (N, 64, 5, 5)
                   → flatten (1600) → linear 128 → ReLU → linear 10 → (N, 10) logits

This file is self-contained (it imports only torch): training copies it byte for byte
into a model archive as ``model.py``, and the server imports it from there.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Map float32 images (N, 1, 28, 28) in [0, 1] to float32 logits (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 5 * 5, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x`` (N, 1, 28, 28); no softmax is applied."""
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits
