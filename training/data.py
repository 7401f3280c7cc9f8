"""Image-text pairs for training, from any archive the indexer reads.

Text is the report where the archive has one (IU-Xray findings + impression), otherwise a
caption built from the finding labels with a template drawn per epoch. Each pair carries `keys`
(its study for reports, its label set for captions) from which the loss's targets are made.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cxr.archives import NO_FINDING, Record
from cxr.errors import FailedPreconditionError
from cxr.images import InvalidImageError, preprocess

CAPTION_TEMPLATES = (
    "chest x-ray with {}",
    "chest radiograph showing {}",
    "frontal chest x-ray: {}",
    "findings: {}",
    "{}",
)
# Normal images get the same templates as abnormal ones, so a template's wording is never a cue
# for "abnormal" (a prompt "chest x-ray showing no finding" must find normal images).
NORMAL_PHRASES = ("no finding", "no acute cardiopulmonary abnormality", "normal heart and lungs")
PROMPT_TEMPLATE = "chest x-ray showing {}"


class TrainingDataError(FailedPreconditionError, ValueError):
    """An archive that cannot be trained on (no images, no text, nothing to validate on)."""


def humanise(label: str) -> str:
    """NIH's `Pleural_Thickening` -> `pleural thickening`."""
    return label.replace("_", " ").lower()


def label_prompt(label: str) -> str:
    """The text query for one finding label (validation and benchmarks)."""
    return PROMPT_TEMPLATE.format(humanise(label))


def caption(labels: tuple[str, ...], rng: np.random.Generator) -> str:
    """A caption for a label set, template and label order drawn from `rng`."""
    if not labels or labels == (NO_FINDING,):
        names = [str(rng.choice(NORMAL_PHRASES))]
    else:
        names = [humanise(label) for label in rng.permutation(list(labels))]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return str(rng.choice(CAPTION_TEMPLATES)).format(joined)


@dataclass(frozen=True)
class Example:
    record: Record
    report: str  # empty where the archive has labels only
    keys: frozenset[str]

    @classmethod
    def from_record(cls, record: Record) -> Example:
        report = record.report
        keys = frozenset([f"study:{record.study_uid}"] if report else record.labels)
        return cls(record, report, keys)

    def text(self, rng: np.random.Generator) -> str:
        return self.report or caption(self.record.labels, rng)


def examples_from(records: list[Record]) -> list[Example]:
    examples = [Example.from_record(r) for r in records]
    usable = [e for e in examples if e.report or e.record.labels]
    if not usable:
        raise TrainingDataError("no record has a report or finding labels to train on: give the archive "
                                "reports (IU-Xray) or labels (NIH labels CSV, manifest `labels`)")
    return usable


def split_by_patient(examples: list[Example], valid_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Whole patients go to validation (seeded) until it holds `valid_fraction` of the images."""
    patients = sorted({e.record.patient_id for e in examples})
    if len(patients) < 2:
        raise TrainingDataError("validation is split by patient and the archive has fewer than 2 patients")
    order = np.random.default_rng(seed).permutation(len(patients))
    per_patient: dict[str, int] = {}
    for e in examples:
        per_patient[e.record.patient_id] = per_patient.get(e.record.patient_id, 0) + 1
    valid, count = set(), 0
    for i in order:
        if count >= valid_fraction * len(examples):
            break
        valid.add(patients[i])
        count += per_patient[patients[i]]
    return ([e for e in examples if e.record.patient_id not in valid],
            [e for e in examples if e.record.patient_id in valid])


def write_split(path: Path, train: list[Example], valid: list[Example]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "patient_id", "split", "labels"])
        for split, examples in (("train", train), ("valid", valid)):
            for e in examples:
                writer.writerow([e.record.image_id, e.record.patient_id, split, "|".join(e.record.labels)])


def load_images(examples: list[Example], size: int, desc: str) -> tuple[torch.Tensor, list[Example]]:
    """uint8 [n, 3, size, size] exactly as the gateway preprocesses; unreadable images dropped."""
    pixels, kept = [], []
    for e in tqdm(examples, desc=desc, unit="img", leave=False):
        try:
            pixels.append(preprocess(e.record.path.read_bytes(), size))
        except (OSError, InvalidImageError):
            continue
        kept.append(e)
    if not kept:
        raise TrainingDataError(f"none of the {len(examples)} {desc} images could be read "
                                f"(first: {examples[0].record.path})")
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(), kept


def augmentation(size: int):
    """Mild, anatomy-preserving: crop/scale, small rotation and shift, exposure; never a flip."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18), antialias=True),
        v2.RandomAffine(degrees=8, translate=(0.05, 0.05)),
        v2.ColorJitter(brightness=0.25, contrast=0.25),
    ])
