"""The findings a chest X-ray report states, as the index's labels: NIH ChestX-ray14's 14 findings
and "No Finding" (cxr.reports.vocabulary holds the words; this module reads them).

A rule-based reader in the manner of NegEx (Chapman et al., 2001): a mention of a finding is
negative when a negation cue stands before it in its clause ("no pneumothorax", "without
effusion", "resolution of the effusion") or right after it ("effusion has resolved", "is not
seen"); uncertain when an uncertainty cue does ("possible early pneumonia", "atelectasis versus
infiltrate", "pneumonia cannot be excluded"); positive otherwise. A clause ends at a sentence end
or a terminator ("but", "however", "there is"), so a cue reaches no further. A label's status over
the report is the strongest of its mentions: positive > uncertain > negative.

Uncertain mentions do not count in `labels()` by default (CheXpert's U-Zeros policy): a label in
the index is a finding the radiologist stated, so a filter on it is not diluted by every "may
represent pneumonia". The IU-Xray annotators index the same way: on the development half, U-Zeros
agrees with them better than U-Ones (micro F1 0.97 against 0.93; the 14 findings alone, 0.94 against
0.88; benchmarks/labeler_quality.py measures both, benchmarks/results/2026-12-03-vm-labeler.md). `labels(text, uncertain=True)` counts them (U-Ones); `read()`
gives each label's status for whoever wants the difference. Hedged statements that still assert a
finding ("probable", "likely", "consistent with", "borderline cardiomegaly") are positive; a
differential ("atelectasis versus infiltrate", "cannot exclude pneumonia") is uncertain.

"No Finding" is the index's: none of the 14 is positive or uncertain. A report that only raises a
finding ("possible early pneumonia") gets no label at all: it is neither stated nor called normal
(that costs ~0.01 of held-back micro F1, 0.961 -> 0.950, against IU's annotators, who often index
such a report "normal"; a normal filter must not return a possible pneumonia). A report of scoliosis
alone is "No Finding", as in ChestX-ray14.

Only the first `MAX_CHARS` characters are read, so time and memory are bounded whatever the input.
Deterministic, no model, standard library only. The result holds offsets into the text, never text.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cxr.errors import InvalidArgumentError
from cxr.reports import vocabulary as v

FINDINGS: tuple[str, ...] = tuple(v.FINDINGS)
LABELS: tuple[str, ...] = (*FINDINGS, v.NO_FINDING)
UNCERTAIN_IS_POSITIVE = False  # the default policy of labels(); see the module docstring


class ReportTextError(InvalidArgumentError, TypeError):
    """What was passed as a report is not text."""


class Status(str, enum.Enum):
    POSITIVE = "positive"
    UNCERTAIN = "uncertain"
    NEGATIVE = "negative"


_RANK = {Status.POSITIVE: 2, Status.UNCERTAIN: 1, Status.NEGATIVE: 0}


@dataclass(frozen=True)
class Mention:
    """One label's status over a report, and where it is mentioned: (start, end) offsets into the text."""
    label: str
    status: Status
    spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Reading:
    """What one report says: a Mention per label it mentions, and "No Finding" always: positive when no
    finding is positive or uncertain, uncertain when some are only uncertain, negative otherwise."""
    mentions: Mapping[str, Mention]
    truncated: bool  # the text was longer than MAX_CHARS; the rest was not read

    def status(self, label: str) -> Status | None:
        """The label's status; None when the report does not mention it."""
        mention = self.mentions.get(label)
        return mention.status if mention else None

    def labels(self, uncertain: bool = UNCERTAIN_IS_POSITIVE) -> tuple[str, ...]:
        """The positive findings (uncertain ones too when `uncertain`), else ("No Finding",) when nothing
        was even possible: a report that only raises a finding ("possible pneumonia") is not called
        normal, it gets no label."""
        counted = {Status.POSITIVE, Status.UNCERTAIN} if uncertain else {Status.POSITIVE}
        found = tuple(label for label in FINDINGS if self.status(label) in counted)
        return found or ((v.NO_FINDING,) if self.status(v.NO_FINDING) is Status.POSITIVE else ())


def _any(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_FINDING_RES = {label: _any(patterns) for label, patterns in v.FINDINGS.items()}
_EXPLAINED_AWAY = {label: re.compile(pattern) for label, pattern in v.EXPLAINED_AWAY.items()}
_IMPLIED_NEGATIVES = [(re.compile(pattern), labels) for pattern, labels in v.IMPLIED_NEGATIVES.items()]
_SENTENCE_END = re.compile(v.SENTENCE_END)
_TERMINATOR = _any(v.TERMINATORS)
_PSEUDO = _any(v.NOT_A_NEGATION)
_UNCERTAIN_NEGATED_BEFORE = _any(v.UNCERTAIN_DESPITE_NEGATION_BEFORE)
_UNCERTAIN_NEGATED_AFTER = _any(v.UNCERTAIN_DESPITE_NEGATION_AFTER)
_NEGATION_BEFORE = _any(v.NEGATION_BEFORE)
_NEGATION_AFTER = _any(v.NEGATION_AFTER)
_UNCERTAIN_BEFORE = _any(v.UNCERTAIN_BEFORE)
_UNCERTAIN_AFTER = _any(v.UNCERTAIN_AFTER)
# ASCII-only lowercasing keeps every offset where it was (str.lower may change lengths).
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def labels(text: str, uncertain: bool = UNCERTAIN_IS_POSITIVE) -> tuple[str, ...]:
    """The index labels a report's text (findings + impression) states, in LABELS order."""
    return read(text).labels(uncertain)


def read(text: str) -> Reading:
    """Each label the report mentions with its status, and "No Finding"."""
    if not isinstance(text, str):
        raise ReportTextError(f"a report must be text (str), not {type(text).__name__}: decode it first")
    lowered = text[:v.MAX_CHARS].translate(_LOWER)
    sentences, starts = _sentence_starts(lowered), _clause_starts(lowered)
    mentions = {}
    for label, pattern in _FINDING_RES.items():
        found = [(_status(lowered, starts, m.start(), m.end()), (m.start(), m.end()))
                 for m in pattern.finditer(lowered) if not _explained_away(lowered, sentences, label, m.start())]
        if found:
            status = max((s for s, _ in found), key=_RANK.__getitem__)
            mentions[label] = Mention(label, status, tuple(span for _, span in found))
    _add_implied_negatives(lowered, mentions)
    mentions[v.NO_FINDING] = Mention(v.NO_FINDING, _no_finding(mentions.values()))
    return Reading(MappingProxyType(mentions), truncated=len(text) > v.MAX_CHARS)


def _add_implied_negatives(text: str, mentions: dict[str, Mention]) -> None:
    for pattern, implied in _IMPLIED_NEGATIVES:
        spans = tuple((m.start(), m.end()) for m in pattern.finditer(text))
        for label in implied:
            if spans and label not in mentions:
                mentions[label] = Mention(label, Status.NEGATIVE, spans)


def _no_finding(mentions) -> Status:
    statuses = {m.status for m in mentions}
    if Status.POSITIVE in statuses:
        return Status.NEGATIVE
    return Status.UNCERTAIN if Status.UNCERTAIN in statuses else Status.POSITIVE


def _sentence_starts(text: str) -> list[int]:
    """Sorted offsets where a sentence starts: 0 and after each sentence end."""
    return [0, *(m.end() for m in _SENTENCE_END.finditer(text))]


def _clause_starts(text: str) -> list[int]:
    """Sorted offsets where a clause starts: each sentence start and each terminator."""
    return sorted({*_sentence_starts(text), *(m.start() for m in _TERMINATOR.finditer(text))})


def _span(text: str, starts: list[int], start: int) -> tuple[int, int]:
    """The sentence or clause (as `starts` holds) around offset `start`."""
    i = bisect.bisect_right(starts, start) - 1
    return starts[i], starts[i + 1] if i + 1 < len(starts) else len(text)


def _explained_away(text: str, sentences: list[int], label: str, start: int) -> bool:
    pattern = _EXPLAINED_AWAY.get(label)
    return bool(pattern and pattern.search(text, *_span(text, sentences, start)))


def _status(text: str, starts: list[int], start: int, end: int) -> Status:
    clause_start, clause_end = _span(text, starts, start)
    # The mention's own words count as "before": "the heart is not enlarged".
    before = _PSEUDO.sub(" ", text[clause_start:end])
    after = text[end:clause_end]
    if _UNCERTAIN_NEGATED_BEFORE.search(before) or _UNCERTAIN_NEGATED_AFTER.search(after):
        return Status.UNCERTAIN
    if _NEGATION_BEFORE.search(before) or _NEGATION_AFTER.search(after):
        return Status.NEGATIVE
    if _UNCERTAIN_BEFORE.search(before) or _UNCERTAIN_AFTER.search(after):
        return Status.UNCERTAIN
    return Status.POSITIVE
