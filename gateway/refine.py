"""Refining a query's vector: relevance feedback (Rocchio) and words added to or taken from it.

Rocchio (Manning, Raghavan & Schütze, Introduction to Information Retrieval, ch. 9):

    q' = α·q + β·mean(relevant) − γ·mean(not relevant),  then L2-normalised

with the textbook weights α = 1, β = 0.75, γ = 0.15: the images marked relevant pull the query towards
them, those marked not relevant push it away, less strongly (a negative judgement says less about what is
wanted). The marks are cumulative: a client sends every image marked so far, in every round.

A text modifier moves an image query towards words (`with_text`, "with effusion") or a text query away from
them (`exclude_text`, "pacemaker"): q' = q ± w·t, L2-normalised, t the words' embedding. The weights are
measured by `make bench-refine` on the validation split (benchmarks/refine.py).
"""

from __future__ import annotations

import numpy as np

from gateway.request_errors import InvalidRequestError

ROCCHIO_ALPHA = 1.0
ROCCHIO_BETA = 0.75
ROCCHIO_GAMMA = 0.15
MAX_FEEDBACK_IDS = 100  # per list: a reader marks tens of results, not thousands
MAX_MODIFIER_CHARS = 1_000
# Text and image embeddings of a CLIP-style model lie apart (the modality gap), so a weight trades the words'
# effect against the query's. Chosen on the NIH validation split with cxr-mini (make bench-refine, 2026-12-03):
# with_text 0.5 raised the top 10's share carrying the finding asked for from 0.072 to 0.100 while their cosine
# to the query image stayed 0.984 (0.986 plain; 1.0: 0.120 / 0.980); exclude_text 0.5 cut the share carrying
# the excluded finding from 0.076 to 0.043 while the finding asked for held 0.108 of 0.122 (1.0: 0.017, 0.078).
WITH_TEXT_WEIGHT = 0.5
EXCLUDE_TEXT_WEIGHT = 0.5
RELEVANT, NOT_RELEVANT = "feedback.relevant_image_ids", "feedback.not_relevant_image_ids"


def normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 1e-12 else vector).astype(np.float32)


def rocchio(query: np.ndarray, relevant: np.ndarray, not_relevant: np.ndarray, alpha: float = ROCCHIO_ALPHA,
            beta: float = ROCCHIO_BETA, gamma: float = ROCCHIO_GAMMA) -> np.ndarray:
    """The query moved by the images judged: `relevant` and `not_relevant` are [n, dim] (n may be 0)."""
    moved = alpha * np.asarray(query, np.float32)
    if len(relevant):
        moved = moved + beta * np.asarray(relevant, np.float32).mean(axis=0)
    if len(not_relevant):
        moved = moved - gamma * np.asarray(not_relevant, np.float32).mean(axis=0)
    return normalised(moved)


def steered(query: np.ndarray, words: np.ndarray, weight: float) -> np.ndarray:
    """The query moved towards the words' embedding (weight > 0) or away from it (weight < 0)."""
    return normalised(np.asarray(query, np.float32) + weight * np.asarray(words, np.float32))


def feedback_ids(feedback) -> tuple[list[str], list[str]]:
    """The two lists of a Feedback message, checked: each at most MAX_FEEDBACK_IDS ids, none empty, none in
    both. Ids are not quoted in errors (archives name images after patient numbers)."""
    lists = {RELEVANT: list(feedback.relevant_image_ids), NOT_RELEVANT: list(feedback.not_relevant_image_ids)}
    for field, ids in lists.items():
        if len(ids) > MAX_FEEDBACK_IDS:
            raise InvalidRequestError(f"{field} holds {len(ids)} ids; the limit is {MAX_FEEDBACK_IDS}: send the "
                                      "images marked most recently", field)
        empty = next((i for i, image_id in enumerate(ids) if not image_id), None)
        if empty is not None:
            raise InvalidRequestError(f"{field}[{empty}] is empty: send the image_id of a hit", field)
    both = set(lists[RELEVANT]) & set(lists[NOT_RELEVANT])
    if both:
        position = next(i for i, image_id in enumerate(lists[NOT_RELEVANT]) if image_id in both)
        raise InvalidRequestError(f"{NOT_RELEVANT}[{position}] is also in {RELEVANT}: mark an image one way",
                                  NOT_RELEVANT)
    return lists[RELEVANT], lists[NOT_RELEVANT]


def modifier(text: str, field: str) -> str:
    """A modifier's words, stripped ("" when none), refused past MAX_MODIFIER_CHARS."""
    if len(text) > MAX_MODIFIER_CHARS:
        raise InvalidRequestError(f"{field} is {len(text)} characters; the limit is {MAX_MODIFIER_CHARS}: a few "
                                  "words such as 'with effusion'", field)
    return text.strip()
