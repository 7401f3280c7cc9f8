import json

import pytest

from cxr import registry
from cxr.errors import UnknownModelError

REAL = {"pubmed_clip": (224, 512, 77), "biomedclip": (224, 512, 256), "siglip": (224, 768, 64),
        "medsiglip": (448, 1152, 64)}


def test_real_models_match_the_published_table():
    for name, (size, dim, context) in REAL.items():
        spec = registry.get_model(name)
        assert (spec.image_size, spec.embed_dim, spec.context_length) == (size, dim, context)
        assert not spec.is_twin


def test_every_family_has_a_tiny_twin_of_the_same_family_and_tokenizer():
    for name in REAL:
        twin = registry.get_model(f"{name}-tiny")
        real = registry.get_model(name)
        assert twin.is_twin and twin.twin_of == name
        assert (twin.family, twin.tokenizer, twin.image_size, twin.context_length) == \
            (real.family, real.tokenizer, real.image_size, real.context_length)


def test_list_models_puts_real_checkpoints_first():
    names = registry.list_models()
    assert names[:5] == sorted([*REAL, "cxr-mini"])
    assert registry.list_models(include_twins=False) == sorted([*REAL, "cxr-mini"])


def test_the_default_model_ships_its_weights_in_the_repository():
    spec = registry.get_model("cxr-mini")
    assert spec.is_embedded and not spec.is_twin
    weights = spec.embedded_weights / "weights.safetensors"
    assert weights.is_file() and weights.stat().st_size < 20e6
    assert (spec.embedded_weights / "MODEL_CARD.md").is_file()


def test_unknown_model_names_the_available_ones():
    with pytest.raises(UnknownModelError) as error:
        registry.get_model("medsiglip-999")
    assert "medsiglip-999" in str(error.value) and "medsiglip" in str(error.value).split("Available")[1]


def test_a_bad_family_is_refused(tmp_path):
    raw = json.loads((registry.CONFIG_DIR / "siglip.json").read_text())
    with pytest.raises(ValueError, match="family"):
        registry._parse("x", dict(raw, family="keras"))


def test_triton_model_names_derive_from_the_registry_name():
    spec = registry.get_model("medsiglip")
    assert (spec.image_model, spec.text_model) == ("medsiglip_image", "medsiglip_text")
