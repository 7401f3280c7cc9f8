"""Training hyperparameters (no torch import: the CLI reads the defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    loss: str = "sigmoid"
    text_tuning: str = "head"
    valid_fraction: float = 0.25
    seed: int = 0
    augment: bool = True


# A tower trained from scratch takes a large step size; a pretrained one fine-tuned with it
# would forget what it knew.
SCRATCH_LR = 3e-4
FINE_TUNE_LR = 2e-5
