import pytest

from cxr import families, registry
from cxr.families import Family, get_family

# What the tables these settings came from said (registry.TEXT_INPUTS and TEXT_PADDING,
# tokenization.CLEANING): a change here changes every export of the family.
EXPECTED = {
    "hf_clip": (("input_ids", "attention_mask"), "longest", None),
    "open_clip": (("input_ids",), "longest", "whitespace"),
    "hf_siglip": (("input_ids",), "max_length", None),
}
# Each registry model's family, as its JSON names it.
MODEL_FAMILIES = {
    "pubmed_clip": "hf_clip", "pubmed_clip-tiny": "hf_clip",
    "biomedclip": "open_clip", "biomedclip-tiny": "open_clip", "biomedclip-minilm": "open_clip", "cxr-mini": "open_clip",
    "siglip": "hf_siglip", "siglip-tiny": "hf_siglip", "medsiglip": "hf_siglip", "medsiglip-tiny": "hf_siglip",
}


@pytest.mark.parametrize("name", EXPECTED)
def test_a_family_s_text_settings_are_unchanged(name):
    family = get_family(name)
    assert family.name == name
    assert (family.text_inputs, family.text_padding, family.text_cleaning) == EXPECTED[name]


def test_there_are_the_three_families():
    assert tuple(families.FAMILIES) == ("hf_clip", "open_clip", "hf_siglip")


@pytest.mark.parametrize("name", MODEL_FAMILIES)
def test_every_registry_model_holds_its_family(name):
    spec = registry.get_model(name)
    assert spec.family is get_family(MODEL_FAMILIES[name])
    assert (spec.text_inputs, spec.text_padding) == (spec.family.text_inputs, spec.family.text_padding)


def test_the_registry_models_are_those_checked_here():
    assert set(registry.list_models()) == set(MODEL_FAMILIES)


def test_an_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="'keras' is not one of .*hf_siglip"):
        get_family("keras")


@pytest.mark.parametrize("field, value", [("text_padding", "shortest"), ("text_cleaning", "lower")])
def test_a_family_with_an_unknown_setting_is_refused(field, value):
    settings = dict(name="x", text_inputs=("input_ids",), text_padding="longest", text_cleaning=None)
    with pytest.raises(ValueError, match=field):
        Family(**dict(settings, **{field: value}))
