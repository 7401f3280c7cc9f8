import pytest
import torch
import torch.nn.functional as F

from training.losses import LOSSES, pair_targets


def test_pair_targets_are_the_jaccard_overlap_of_label_sets():
    targets = pair_targets([frozenset({"Effusion"}), frozenset({"Effusion", "Mass"}), frozenset({"No Finding"})])
    assert targets.tolist() == [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_both_losses_prefer_aligned_pairs_and_train_their_temperature():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(8, 16), dim=-1)
    shuffled = image[torch.tensor([1, 2, 3, 0, 5, 6, 7, 4])]
    targets = pair_targets([frozenset({k}) for k in "abcdabcd"])
    for name, loss_class in LOSSES.items():
        loss = loss_class()
        assert loss(image, image, torch.eye(8)) < loss(image, shuffled, torch.eye(8)), name
        value = loss(image, image, targets)
        value.backward()
        assert loss.log_scale.grad is not None and torch.isfinite(value), name


def test_sigmoid_loss_is_the_siglip_formula_for_one_positive_per_row():
    torch.manual_seed(1)
    image, text = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    loss = LOSSES["sigmoid"]()
    logits = image @ text.T * 10 - 10
    signs = 2 * torch.eye(4) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 4
    assert loss(image, text, torch.eye(4)).item() == pytest.approx(expected.item(), rel=1e-5)
