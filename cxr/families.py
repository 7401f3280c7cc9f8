"""The model families: what serving needs to know of each (text inputs, padding, cleaning), in one table.

A registry entry names its family (`"family": "hf_siglip"` in cxr/model_configs/) and holds the
`Family` itself. What export needs of a family (loading its checkpoint, building its twin) needs torch
and lives in export/families.py, keyed by `Family.name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr import tensor_names
from cxr.tokenization import CLEANINGS, PADDINGS


@dataclass(frozen=True)
class Family:
    name: str
    # The text tower's inputs, in order.
    text_inputs: tuple[str, ...]
    # "longest": texts are padded to the longest text of a call (the text tower has a dynamic
    # sequence axis); "max_length": to the context length (fixed).
    text_padding: str
    # How the tokenizer cleans text before tokenising (a name of cxr.tokenization.CLEANINGS), or None.
    text_cleaning: str | None

    def __post_init__(self):
        if self.text_padding not in PADDINGS:
            raise ValueError(f"family {self.name}: text_padding {self.text_padding!r} is not one of {PADDINGS}")
        if self.text_cleaning not in CLEANINGS:
            raise ValueError(f"family {self.name}: text_cleaning {self.text_cleaning!r} is not one of {CLEANINGS}")


# Text inputs: SigLIP was trained without a padding mask and open_clip derives its mask from the pad
# id inside the model.
# Padding: "longest" lets a query pay for its ~10 tokens rather than the context length; right for
# towers whose embedding does not change with padding: CLIP pools at end-of-text behind a causal and
# padding mask, open_clip's HF BERT (BiomedCLIP, cxr-mini) masks the pad id and pools CLS or the
# masked mean. SigLIP pools the last position and was trained with padding="max_length", so a text
# padded to its own length embeds elsewhere (measured on the twins: cos 0.08 to the max_length embedding).
# Cleaning: open_clip's HFTokenizer cleans text before tokenising; HF tokenizers do their own cleaning.
HF_CLIP = Family("hf_clip", (tensor_names.INPUT_IDS, tensor_names.ATTENTION_MASK), "longest", None)
OPEN_CLIP = Family("open_clip", (tensor_names.INPUT_IDS,), "longest", "whitespace")
HF_SIGLIP = Family("hf_siglip", (tensor_names.INPUT_IDS,), "max_length", None)

FAMILIES = {family.name: family for family in (HF_CLIP, OPEN_CLIP, HF_SIGLIP)}


def get_family(name: str) -> Family:
    """The family called `name`; an unknown name lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"family {name!r} is not one of {tuple(FAMILIES)}") from None
