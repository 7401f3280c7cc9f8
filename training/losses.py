"""Contrastive losses over a batch of image and text embeddings (L2-normalised).

`targets[i, j]` in [0, 1] says how much image i and text j belong together: 1 on the diagonal,
and with label captions also between images with the same findings (Jaccard overlap of their
label sets), so two normal images are not pushed apart and "effusion" half-matches
"effusion and mass".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SigmoidLoss(nn.Module):
    """SigLIP (Zhai et al. 2023): an independent binary decision per image-text pair."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, image: torch.Tensor, text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = image @ text.T * self.log_scale.exp() + self.bias
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / image.shape[0]


class InfoNCELoss(nn.Module):
    """CLIP's symmetric softmax loss, with the target spread over every positive."""

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def forward(self, image: torch.Tensor, text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = image @ text.T * self.log_scale.exp().clamp(max=100)
        image_to_text = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
        text_to_image = F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
        return (image_to_text + text_to_image) / 2


LOSSES = {"sigmoid": SigmoidLoss, "infonce": InfoNCELoss}


def pair_targets(keys: list[frozenset[str]]) -> torch.Tensor:
    """Jaccard overlap of each pair's keys (label sets, or a study id for report pairs)."""
    vocabulary = {k: i for i, k in enumerate(sorted(set().union(*keys)))}
    onehot = torch.zeros(len(keys), len(vocabulary))
    for row, item in enumerate(keys):
        onehot[row, [vocabulary[k] for k in item]] = 1
    shared = onehot @ onehot.T
    sizes = onehot.sum(1)
    return shared / (sizes[:, None] + sizes[None, :] - shared)
