"""A loaded checkpoint as a trainable dual encoder, in the served towers' exact input space.

The image side is export's `ImageTower` (uint8-range NHWC pixels, normalisation folded in), so
training sees what Triton will see. The text side is trained fully, or only its projection head
(`head`) over a frozen transformer whose pooled outputs are cached per distinct text: a frozen
MiniLM is then run once per caption, not once per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError
from cxr.registry import ModelSpec
from export.checkpoints import Encoder
from export.onnx_export import ImageTower

TEXT_TUNING = ("head", "full")


class DualEncoder(nn.Module):
    def __init__(self, encoder: Encoder, spec: ModelSpec, text_tuning: str):
        super().__init__()
        self.encoder = encoder
        self.image_tower = ImageTower(encoder.image_features, spec)
        self.text_tuning = text_tuning
        self._pooled_cache: dict[str, torch.Tensor] = {}
        encoder.model.requires_grad_(True)
        if text_tuning == "head":
            text = getattr(encoder.model, "text", None)
            if not all(hasattr(text, name) for name in ("transformer", "pooler", "proj")):
                raise CxrError(f"--text-tuning head needs an open_clip model with a Hugging Face text tower; "
                               f"{spec.name} ({spec.family.name}) has none: use --text-tuning full")
            text.transformer.requires_grad_(False)
            self.text = text

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.model.parameters() if p.requires_grad]

    def frozen_names(self) -> set[str]:
        return {name for name, p in self.encoder.model.named_parameters() if not p.requires_grad}

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.model.train(mode)
        if self.text_tuning == "head":
            self.text.transformer.eval()  # frozen: no dropout, so cached outputs stay valid
        return self

    def embed_images(self, pixels_nchw: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels_nchw.permute(0, 2, 3, 1))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_tuning == "head":
            return F.normalize(self.text.proj(self._pooled(texts)), dim=-1)
        tokens = self.encoder.tokenize(texts)
        return F.normalize(self.encoder.text_features(*(torch.from_numpy(v) for v in tokens.values())), dim=-1)

    def _pooled(self, texts: list[str]) -> torch.Tensor:
        for text in dict.fromkeys(texts):
            if text not in self._pooled_cache:
                self._pooled_cache[text] = self._run_frozen_transformer(text)
        return torch.stack([self._pooled_cache[t] for t in texts])

    @torch.no_grad()
    def _run_frozen_transformer(self, text: str) -> torch.Tensor:
        # One text at a time, without its padding: the result depends on the text alone, not on
        # which batch first asked for it, so a resumed run reproduces an uninterrupted one.
        ids = self.encoder.tokenize([text])["input_ids"]
        ids = torch.from_numpy(ids[:, :int((ids[0] != self.text.config.pad_token_id).sum())])
        mask = torch.ones_like(ids)
        return self.text.pooler(self.text.transformer(input_ids=ids, attention_mask=mask), mask)[0]
