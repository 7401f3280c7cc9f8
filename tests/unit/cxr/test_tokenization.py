"""The tokenizer exported beside a text tower reproduces the checkpoint's own tokenisation."""

import numpy as np
import pytest

from cxr.errors import ExportError
from cxr.manifest import read_export_manifest, tokenizer_dir
from cxr.registry import get_model
from cxr.tokenization import TextTokenizer
from export.repository import export_model
from support import SERVED, make_settings

# What users type and what reports hold, beyond plain report text: each a way tokenizers differ.
EDGE_CASES = [
    "",
    " ",
    "\n\t ",
    "Small LEFT pleural effusion &amp; cardiomegaly.",
    "  extra   spaces\n",
    "NO ACUTE CARDIOPULMONARY ABNORMALITY",
    "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &#x27;hex&#x27; &nbsp;",
    "T2-weighted, 3.5 cm; (R) > (L)? 10% ~ 1/2 [old] {new} @ #5 $ ^ * + = | \\ ` _",
    "...!!!???---",
    "Café naïve résumé Straße ﬁbrosis Ωmega İstanbul",
    "中文 報告 テキスト 한국어",
    "emoji 😀 in a report 🫁",
    "zero\u200bwidth non\u00a0breaking ideographic\u3000space combining e\u0301",
    "\u2581leading sentencepiece underline \u2581\u2581",
    "control \x1c\x1f\x85 characters\r\n",
    "[CLS] [SEP] [PAD] [UNK] [MASK] literal",
    "</s> <unk> <pad> literal, and</s>glued<unk>",
    "<|startoftext|> <|endoftext|> literal",
    "pneumothorax" * 80,
    "word " * 400,
]


@pytest.fixture(scope="module")
def repository(tmp_path_factory, cache_dir):
    settings = make_settings(tmp_path_factory.mktemp("tok"), cache_dir)
    for name in SERVED:
        export_model(get_model(name), settings, log=lambda *_: None)
    return settings.model_repository


def _tokenizer(repository, name, padding="max_length") -> TextTokenizer:
    manifest = read_export_manifest(repository, name)
    return TextTokenizer(tokenizer_dir(repository, name), manifest["context_length"], get_model(name).text_inputs,
                         manifest["tokenizer"]["clean"], padding=padding)


@pytest.mark.parametrize("name", SERVED)
def test_exported_tokenizer_equals_the_checkpoint_tokenizer(name, repository, encoders, report_texts):
    spec = get_model(name)
    texts = report_texts + EDGE_CASES
    ours, theirs = _tokenizer(repository, name)(texts), encoders[name].tokenize(texts)
    assert set(ours) == set(spec.text_inputs)
    for input_name in spec.text_inputs:
        assert ours[input_name].shape == (len(texts), spec.context_length)
        assert ours[input_name].dtype == np.int64
        np.testing.assert_array_equal(ours[input_name], theirs[input_name])


@pytest.mark.parametrize("name", SERVED)
def test_texts_one_at_a_time_equal_the_batch(name, repository, report_texts):
    tokenizer = _tokenizer(repository, name)
    texts = report_texts[:3] + EDGE_CASES[:6]
    batch = tokenizer(texts)
    for i, text in enumerate(texts):
        for input_name, ids in tokenizer([text]).items():
            np.testing.assert_array_equal(ids[0], batch[input_name][i])


@pytest.mark.parametrize("name", SERVED)
def test_longest_padding_is_max_length_cut_at_the_longest_row(name, repository, report_texts):
    spec = get_model(name)
    full, longest = _tokenizer(repository, name), _tokenizer(repository, name, padding="longest")
    for texts in (["effusion", "no acute cardiopulmonary abnormality", ""], report_texts, ["a"], EDGE_CASES):
        padded, cut = full(texts), longest(texts)
        length = int((padded[spec.text_inputs[0]] != full.pad_id).sum(axis=1).max())
        assert 1 <= cut[spec.text_inputs[0]].shape[1] <= spec.context_length
        for input_name in spec.text_inputs:
            width = cut[input_name].shape[1]
            assert width >= length  # a pad id inside a row (CLIP's eos is its pad) only makes it longer
            np.testing.assert_array_equal(cut[input_name], padded[input_name][:, :width])
            assert (padded[input_name][:, width:] == (full.pad_id if input_name == "input_ids" else 0)).all()


def test_a_long_text_fills_the_context_exactly(repository, report_texts):
    tokenizer = _tokenizer(repository, "cxr-mini", padding="longest")
    ids = tokenizer([report_texts[-1], "short"])["input_ids"]
    assert ids.shape == (2, tokenizer.context_length)
    assert ids[1, -1] == tokenizer.pad_id


@pytest.mark.parametrize("name", SERVED)
def test_pad_id_is_the_checkpoint_pad_id(name, repository, encoders):
    tokenizer = _tokenizer(repository, name)
    assert isinstance(tokenizer.pad_id, int)
    theirs = encoders[name].tokenize([""])["input_ids"][0]
    assert theirs[-1] == tokenizer.pad_id  # an empty text is all padding at its end


def test_unknown_padding_is_refused(repository):
    with pytest.raises(ValueError, match="padding 'dynamic' is not one of"):
        _tokenizer(repository, "cxr-mini", padding="dynamic")


def test_a_folder_without_a_serving_tokenizer_names_the_remedy(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    with pytest.raises(ExportError, match="no tokenizer.json.*Re-export"):
        TextTokenizer(tmp_path, 16, ("input_ids",), None)
