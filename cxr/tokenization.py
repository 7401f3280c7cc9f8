"""The text tokenizer as exported beside a text tower: loads from files, needs no torch.

Reproduces each family's own tokenisation (checked against it in tests/export): pad to the
context length so Triton can batch requests of any text length together.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

# open_clip's HFTokenizer cleans text before tokenising; HF tokenizers do their own cleaning.
CLEANING = {"hf_clip": None, "hf_siglip": None, "open_clip": "whitespace"}


def _clean_whitespace(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


class TextTokenizer:
    """texts -> {input name: int64 [n, context_length]} for one exported text tower."""

    def __init__(self, directory: Path, context_length: int, input_names: tuple[str, ...], clean: str | None):
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.context_length = context_length
        self.input_names = tuple(input_names)
        self._clean = _clean_whitespace if clean == "whitespace" else None

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self._clean is not None:
            texts = [self._clean(t) for t in texts]
        encoded = self._tokenizer(list(texts), max_length=self.context_length, padding="max_length",
                                  truncation=True, return_tensors="np")
        return {name: encoded[name].astype(np.int64) for name in self.input_names}
