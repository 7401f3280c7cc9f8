"""The text tokenizer as exported beside a text tower: loads from files, needs no torch and no transformers.

Reproduces each family's own tokenisation (checked against it in tests/unit/cxr/test_tokenization.py):
- a `tokenizer.json` (what transformers' fast tokenizers save: CLIP BPE, BERT WordPiece) runs in the
  `tokenizers` library, the same Rust code transformers calls;
- SigLIP's SentencePiece model (transformers has no fast SigLIP tokenizer, so no tokenizer.json) runs in
  `sentencepiece`, with SiglipTokenizer's own canonicalisation and special-token handling redone here.
Rows are padded to the context length ("max_length", so Triton can batch requests of any text length
together) or to the longest row of the call ("longest", for towers exported with a dynamic length).
"""

from __future__ import annotations

import html
import json
import re
import string
from pathlib import Path
from typing import Callable

import numpy as np

from cxr import tensor_names
from cxr.errors import ExportError

PADDINGS = ("max_length", "longest")
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_MODEL = "spiece.model"
KNOWN_INPUTS = (tensor_names.INPUT_IDS, tensor_names.ATTENTION_MASK)

Encode = Callable[[list[str]], list[list[int]]]  # texts -> ids with special tokens, truncated, unpadded


def _clean_whitespace(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


# What a family (cxr.families) and a manifest name the cleaning done before tokenising; None: none.
CLEANINGS = {None: None, "whitespace": _clean_whitespace}


class TextTokenizer:
    """texts -> {input name: int64 [n, length]} for one exported text tower.

    length is `context_length` with padding="max_length", else the longest row of the call (at most
    `context_length`). Padding uses `pad_id`; attention_mask is 1 over tokens, 0 over padding.
    """

    def __init__(self, directory: Path, context_length: int, input_names: tuple[str, ...], clean: str | None,
                 padding: str = "max_length"):
        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r} is not one of {PADDINGS}")
        unknown = sorted(set(input_names) - set(KNOWN_INPUTS))
        if unknown:
            raise ValueError(f"text inputs {unknown} cannot be made by a tokenizer; known: {KNOWN_INPUTS}")
        self.context_length = context_length
        self.input_names = tuple(input_names)
        self.padding = padding
        self._clean = CLEANINGS.get(clean)
        self._encode, self.pad_id = load_encoder(Path(directory), context_length)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self._clean is not None:
            texts = [self._clean(t) for t in texts]
        rows = self._encode(list(texts))
        ids, mask = self._pad(rows)
        arrays = {tensor_names.INPUT_IDS: ids, tensor_names.ATTENTION_MASK: mask}
        return {name: arrays[name] for name in self.input_names}

    def _pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        # "longest" keeps at least one column: a [n, 0] tensor is no valid model input.
        width = self.context_length if self.padding == "max_length" else max([len(r) for r in rows] + [1])
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


def load_encoder(directory: Path, context_length: int) -> tuple[Encode, int]:
    """The encode function and pad id of the tokenizer saved in `directory` at export."""
    config = _read_config(directory)
    if config.get("padding_side", "right") != "right" or config.get("truncation_side", "right") != "right":
        raise ExportError(f"{directory / TOKENIZER_CONFIG} pads or truncates on the left; only right-side "
                          "padding and truncation are supported: save the tokenizer with padding_side='right'.")
    if config.get("tokenizer_class") == "SiglipTokenizer":
        return _siglip_encoder(directory, config, context_length)
    if (directory / TOKENIZER_JSON).is_file():
        return _tokenizers_encoder(directory, config, context_length)
    raise ExportError(f"{directory} holds no {TOKENIZER_JSON} (and its tokenizer_class "
                      f"{config.get('tokenizer_class')!r} is not SiglipTokenizer): the serving side tokenises "
                      "without transformers. Re-export the model (`make export MODEL=...`) with a fast tokenizer.")


def _read_config(directory: Path) -> dict:
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        raise ExportError(f"{path} not found: the tokenizer folder of an export is incomplete. "
                          "Re-export the model (`make export MODEL=...`).")
    return json.loads(path.read_text())


def _token(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _pad_id(directory: Path, config: dict, token_to_id: Callable[[str], int | None]) -> int:
    pad = _token(config.get("pad_token"))
    pad_id = token_to_id(pad) if pad is not None else None
    if pad_id is None:
        raise ExportError(f"{directory / TOKENIZER_CONFIG} names no pad token in the vocabulary "
                          f"(pad_token={pad!r}): set one on the tokenizer before export.")
    return pad_id


def _tokenizers_encoder(directory: Path, config: dict, context_length: int) -> tuple[Encode, int]:
    """tokenizer.json in the `tokenizers` library, truncated as transformers truncates, padded by us."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_JSON))
    tokenizer.no_padding()
    # Truncation inside the library leaves room for the special tokens the post-processor adds.
    tokenizer.enable_truncation(max_length=context_length, stride=0, strategy="longest_first", direction="right")
    # As transformers' split_special_tokens (default off): "[SEP]" typed in a text stays one id.
    tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=True)]

    return encode, _pad_id(directory, config, tokenizer.token_to_id)


def _siglip_encoder(directory: Path, config: dict, context_length: int) -> tuple[Encode, int]:
    """SiglipTokenizer (transformers' slow, SentencePiece-backed) redone on `sentencepiece` alone."""
    siglip = _SiglipSentencePiece(directory / SENTENCEPIECE_MODEL, config)
    return (lambda texts: [siglip.encode(t, context_length) for t in texts]), siglip.pad_id


_SPIECE_UNDERLINE = "▁"
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


class _SiglipSentencePiece:
    """Step for step transformers.SiglipTokenizer: split on added tokens, canonicalise each piece
    (lower-case, drop ASCII punctuation, squeeze whitespace), SentencePiece-encode it behind the unk
    token (then dropped), append </s>, truncate to leave room for it."""

    def __init__(self, model_path: Path, config: dict):
        import sentencepiece as spm

        if not model_path.is_file():
            raise ExportError(f"{model_path} not found: a SigLIP export keeps its SentencePiece model there. "
                              "Re-export the model (`make export MODEL=...`).")
        self._sp = spm.SentencePieceProcessor()
        self._sp.Load(str(model_path))
        if config.get("legacy", True) is False:
            self._drop_dummy_prefix()
        self._lower = config.get("do_lower_case", True)
        self._unk = _token(config.get("unk_token")) or "<unk>"
        self._unk_length = len(self._sp.encode(self._unk))
        self._added = self._added_tokens(config)
        single_word = sorted(t for t, flags in self._added.items() if flags.get("single_word"))
        if single_word:
            raise ExportError(f"added tokens {single_word} are single_word, which the serving tokenizer does not "
                              "reproduce: export a tokenizer without single_word tokens.")
        self._special = {content for content, flags in self._added.items() if flags.get("special", True)}
        self._special |= {_token(config.get(k)) for k in ("eos_token", "unk_token", "pad_token") if config.get(k)}
        self._split = None if config.get("split_special_tokens", False) else self._split_pattern(config)
        self.eos_id = self._to_id(_token(config.get("eos_token")) or "</s>")
        self.pad_id = _pad_id(model_path.parent, config, self._to_id)

    def _drop_dummy_prefix(self) -> None:
        # transformers does this for legacy=False; sentencepiece ships its own proto module, so no
        # transformers (nor protoc) is needed here.
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
        if proto.normalizer_spec.add_dummy_prefix:
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp.LoadFromSerializedProto(proto.SerializeToString())

    @staticmethod
    def _added_tokens(config: dict) -> dict[str, dict]:
        """content -> AddedToken flags, from tokenizer_config.json's added_tokens_decoder."""
        return {token["content"]: dict(token, id=int(index))
                for index, token in (config.get("added_tokens_decoder") or {}).items()}

    def _split_pattern(self, config: dict) -> re.Pattern:
        # transformers' trie matches the leftmost, then longest, added token: longest first in the alternation.
        contents = sorted(set(self._added) | self._special, key=len, reverse=True)
        if not contents:
            raise ExportError(f"the SigLIP tokenizer config names no special tokens ({sorted(config)}): "
                              "re-export the model so that tokenizer_config.json holds eos, unk and pad tokens.")
        return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")

    def _to_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]["id"]
        return self._sp.piece_to_id(token)

    def encode(self, text: str, context_length: int) -> list[int]:
        ids = [self._to_id(t) for t in self._tokenize(text)]
        ids = ids[:context_length - 1]  # room for </s>
        if not ids or ids[-1] != self.eos_id:  # SiglipTokenizer adds no second </s>
            ids.append(self.eos_id)
        return ids

    def _tokenize(self, text: str) -> list[str]:
        text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
        if self._split is None:  # split_special_tokens: "</s>" typed in a text is text
            return self._sentencepiece(text)
        pieces = self._split_added(text)
        tokens = []
        for piece in pieces:
            if not piece:
                continue
            tokens.extend([piece] if piece in self._added or piece in self._special else self._sentencepiece(piece))
        if len(tokens) > 1 and tokens[0] == _SPIECE_UNDERLINE and tokens[1] in self._special:
            tokens = tokens[1:]
        return tokens

    def _split_added(self, text: str) -> list[str]:
        """Text split around added tokens, their lstrip/rstrip flags applied to the neighbours."""
        pieces = self._split.split(text)
        for i, piece in enumerate(pieces):
            flags = self._added.get(piece) if i % 2 else None
            if flags is None:
                continue
            if flags.get("rstrip") and i + 1 < len(pieces) and pieces[i + 1]:
                pieces[i + 1] = pieces[i + 1].lstrip()
            if flags.get("lstrip") and i > 0 and pieces[i - 1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
        return pieces

    def _sentencepiece(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        tokens = self._sp.encode(self._unk + text, out_type=str)
        return tokens[self._unk_length:] if len(tokens) >= self._unk_length else tokens

    def _canonicalize(self, text: str) -> str:
        if self._lower:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_NO_PUNCTUATION)).strip()
