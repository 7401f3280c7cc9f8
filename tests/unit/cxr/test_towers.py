"""Tower signatures from the registry: fixed or dynamic text length, padding values and buckets."""

import numpy as np

from cxr import tensor_names
from cxr.registry import get_model
from cxr.towers import (
    DYNAMIC,
    TensorSpec,
    bucket_length,
    pad_sequences,
    pad_values,
    sequence_buckets,
    text_tower,
    tower_from_dict,
)


def test_a_longest_family_has_a_dynamic_text_length_bounded_by_its_context():
    tower = text_tower(get_model("cxr-mini"))
    assert [t.dims for t in tower.inputs] == [(DYNAMIC,)]
    assert tower.dynamic_sequence and tower.max_sequence == 128


def test_siglip_keeps_its_context_length():
    tower = text_tower(get_model("medsiglip"))
    assert [t.dims for t in tower.inputs] == [(64,)]
    assert not tower.dynamic_sequence


def test_a_tower_survives_the_manifest_round_trip():
    from dataclasses import asdict

    for name in ("cxr-mini", "pubmed_clip", "siglip"):
        tower = text_tower(get_model(name))
        assert tower_from_dict(asdict(tower)) == tower


def test_dynamic_dims_accept_any_length_and_fixed_ones_only_theirs():
    assert TensorSpec("x", "int64", (DYNAMIC,)).accepts((5,))
    assert TensorSpec("x", "int64", (64,)).accepts((64,))
    assert not TensorSpec("x", "int64", (64,)).accepts((5,))
    assert not TensorSpec("x", "int64", (DYNAMIC,)).accepts((5, 2))


def test_buckets_double_from_16_and_end_at_the_context_length():
    assert sequence_buckets(128) == (16, 32, 64, 128)
    assert sequence_buckets(77) == (16, 32, 64, 77)
    assert sequence_buckets(16) == (16,)
    assert [bucket_length(n, sequence_buckets(77)) for n in (1, 16, 17, 65, 77)] == [16, 16, 32, 77, 77]


def test_pad_sequences_uses_the_pad_id_for_ids_and_0_for_the_mask():
    values = pad_values((tensor_names.INPUT_IDS, tensor_names.ATTENTION_MASK), 9)
    padded = pad_sequences({tensor_names.INPUT_IDS: np.array([[1, 2]]), tensor_names.ATTENTION_MASK: np.array([[1, 1]])},
                           4, values)
    np.testing.assert_array_equal(padded[tensor_names.INPUT_IDS], [[1, 2, 9, 9]])
    np.testing.assert_array_equal(padded[tensor_names.ATTENTION_MASK], [[1, 1, 0, 0]])
