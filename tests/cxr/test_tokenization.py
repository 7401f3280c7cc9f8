"""The tokenizer exported beside a text tower reproduces the checkpoint's own tokenisation."""

import numpy as np
import pytest

from cxr.manifest import read_manifest, tokenizer_dir
from cxr.registry import get_model
from cxr.tokenization import TextTokenizer
from export.repository import export_model
from support import SERVED, make_settings


@pytest.fixture(scope="module")
def repository(tmp_path_factory, cache_dir):
    settings = make_settings(tmp_path_factory.mktemp("tok"), cache_dir)
    for name in SERVED:
        export_model(get_model(name), settings, log=lambda *_: None)
    return settings.model_repository


@pytest.mark.parametrize("name", SERVED)
def test_exported_tokenizer_equals_the_checkpoint_tokenizer(name, repository, encoders, report_texts):
    manifest = read_manifest(repository, name)
    spec = get_model(name)
    exported = TextTokenizer(tokenizer_dir(repository, name), manifest["context_length"], spec.text_inputs,
                             manifest["tokenizer"]["clean"])
    texts = report_texts + ["Small LEFT pleural effusion &amp; cardiomegaly.", "  extra   spaces\n", ""]
    ours, theirs = exported(texts), encoders[name].tokenize(texts)
    assert set(ours) == set(spec.text_inputs)
    for input_name in spec.text_inputs:
        assert ours[input_name].shape == (len(texts), spec.context_length)
        np.testing.assert_array_equal(ours[input_name], theirs[input_name])
