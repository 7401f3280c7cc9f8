"""Finding suggestions: what an image query's nearest archived neighbours carry, as a calibrated probability
per finding. Evidence from similar cases, never a diagnosis.

  vote          the k nearest neighbours' labels, each neighbour weighted by its similarity, into a raw score
                per label in [0, 1] (the weighted share of neighbours carrying it) and a count of them
  Calibration   per label a monotone map raw score -> probability, fitted on a validation split (isotonic
                regression where the label has enough positives and negatives, else Platt's logistic fit),
                with the k it was fitted for; kept as JSON with the index (VectorStore.calibration)

Each label is calibrated on its own, so the probabilities of one query do not sum to 1 across labels: an
image can carry several findings, or none. Pure numpy: the gateway imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FORMAT = 1
K_GRID = (5, 10, 20, 50)
WEIGHTINGS = ("similarity", "uniform")
ISOTONIC_MIN_CLASS = 20  # isotonic regression wants this many positives and negatives; fewer: Platt
PLATT_ITERATIONS = 50
PLATT_RIDGE = 1e-3  # keeps Platt's slope finite when a label's scores separate it perfectly


@dataclass(frozen=True)
class Vote:
    """One query's vote: per label, the weighted share of neighbours carrying it and how many do."""

    scores: dict[str, float]
    counts: dict[str, int]


def vote(similarities: Sequence[float], labels: Sequence[Sequence[str]], k: int,
         weighting: str = "similarity") -> Vote:
    """The first `k` neighbours (best first) vote: weight max(similarity, 0) each ("similarity", uniform when
    all are 0) or 1 each ("uniform")."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r}: one of {WEIGHTINGS}")
    sims = np.asarray(similarities[:k], np.float64)
    voters = [set(names) for names in labels[:k]]
    assert len(sims) == len(voters), (len(sims), len(voters))
    weights = np.clip(sims, 0, None) if weighting == "similarity" else np.ones(len(sims))
    if not weights.sum():
        weights = np.ones(len(sims))
    total = weights.sum() or 1.0
    scores: dict[str, float] = {}
    counts: dict[str, int] = {}
    for weight, names in zip(weights, voters):
        for name in names:
            scores[name] = scores.get(name, 0.0) + float(weight) / total
            counts[name] = counts.get(name, 0) + 1
    return Vote({name: min(score, 1.0) for name, score in scores.items()}, counts)


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: the non-decreasing fit of y on x, as breakpoints (xs, ys) to interpolate
    between: each block of pooled points gives its lowest and highest x, both at the block's mean."""
    order = np.lexsort((y, x))
    x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    means, weights, lows, highs = [], [], [], []
    for xi, yi in zip(x, y):
        means.append(yi), weights.append(1.0), lows.append(xi), highs.append(xi)
        while len(means) > 1 and means[-2] >= means[-1]:
            w = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            weights[-2], highs[-2] = w, highs[-1]
            del means[-1], weights[-1], lows[-1], highs[-1]
    xs, ys = [], []
    for low, high, mean in zip(lows, highs, means):
        xs += [low] if low == high else [low, high]
        ys += [mean] if low == high else [mean, mean]
    return xs, ys


def platt(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt's fit p = sigmoid(a x + b) with his smoothed targets, by Newton's method; a >= 0 (monotone):
    a label whose scores run the wrong way gets its base rate."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    positives = y.sum()
    targets = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))
    a, b = 0.0, float(np.log((positives + 1) / (len(y) - positives + 1)))
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(PLATT_ITERATIONS):
        p = _sigmoid(a * x + b)
        gradient = design.T @ (p - targets) + PLATT_RIDGE * np.array([a, 0.0])
        hessian = (design * (p * (1 - p))[:, None]).T @ design + PLATT_RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    if a < 0:
        return 0.0, float(np.log((positives + 1) / (len(y) - positives + 1)))
    return float(a), float(b)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class LabelMap:
    """One label's monotone map raw score -> probability."""

    method: str  # isotonic | platt
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def fit(cls, raw: np.ndarray, truth: np.ndarray) -> LabelMap:
        positives = int(np.sum(truth))
        if min(positives, len(truth) - positives) >= ISOTONIC_MIN_CLASS:
            xs, ys = isotonic(raw, truth)
            return cls("isotonic", tuple(xs), tuple(ys))
        a, b = platt(raw, truth)
        return cls("platt", a=a, b=b)

    def __call__(self, raw) -> np.ndarray:
        raw = np.asarray(raw, np.float64)
        if self.method == "isotonic":
            return np.interp(raw, self.xs, self.ys)
        return _sigmoid(self.a * raw + self.b)

    def to_dict(self) -> dict:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.xs), "y": list(self.ys)}
        return {"method": "platt", "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: dict) -> LabelMap:
        method = data.get("method")
        if method == "isotonic":
            xs, ys = tuple(map(float, data["x"])), tuple(map(float, data["y"]))
            if not xs or len(xs) != len(ys) or np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0) \
                    or min(ys) < 0 or max(ys) > 1:
                raise ValueError("an isotonic map needs as many non-decreasing x as y, y in [0, 1]")
            return cls("isotonic", xs, ys)
        if method == "platt":
            a, b = float(data["a"]), float(data["b"])
            if a < 0 or not np.isfinite([a, b]).all():
                raise ValueError("a Platt map needs a finite slope a >= 0")
            return cls("platt", a=a, b=b)
        raise ValueError(f"calibration method {method!r}: isotonic or platt")


@dataclass(frozen=True)
class Suggestion:
    label: str
    probability: float
    neighbours: int


@dataclass(frozen=True)
class Calibration:
    """The k neighbours that vote, their weighting and a map per label; `fitted` says on what (counts, split)."""

    k: int
    weighting: str
    maps: dict[str, LabelMap]
    fitted: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, raw: dict[str, np.ndarray], truth: dict[str, np.ndarray], k: int, weighting: str = "similarity",
            fitted: dict | None = None) -> Calibration:
        """Per label, its queries' raw scores and whether each query carries it (0/1)."""
        maps = {name: LabelMap.fit(raw[name], truth[name]) for name in sorted(raw)}
        return cls(k, weighting, maps, dict(fitted or {}))

    def probabilities(self, scores: dict[str, float]) -> dict[str, float]:
        """Every calibrated label's probability for one query's raw scores (a label no neighbour carries: 0)."""
        return {name: float(label_map(scores.get(name, 0.0))) for name, label_map in self.maps.items()}

    def suggest(self, similarities: Sequence[float], labels: Sequence[Sequence[str]]) -> list[Suggestion]:
        """The labels at least one of the k nearest neighbours carries, calibrated, most probable first."""
        voted = vote(similarities, labels, self.k, self.weighting)
        found = [Suggestion(name, float(self.maps[name](score)), voted.counts[name])
                 for name, score in voted.scores.items() if name in self.maps]
        return sorted(found, key=lambda s: (-s.probability, s.label))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "k": self.k, "weighting": self.weighting, "fitted": self.fitted,
                "labels": {name: label_map.to_dict() for name, label_map in self.maps.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """ValueError when it is not a calibration this version reads."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"calibration format {data.get('format')!r}; this version reads {FORMAT}")
            k, weighting = int(data["k"]), str(data["weighting"])
            if k < 1 or weighting not in WEIGHTINGS:
                raise ValueError(f"k {k} and weighting {weighting!r}: k >= 1, weighting one of {WEIGHTINGS}")
            maps = {str(name): LabelMap.from_dict(value) for name, value in data["labels"].items()}
            return cls(k, weighting, maps, dict(data.get("fitted") or {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a calibration ({exc!r})") from exc


@dataclass(frozen=True)
class Neighbours:
    """One validation query's neighbours, best first, its own patient's images left out, and its true labels."""

    similarities: tuple[float, ...]
    labels: tuple[tuple[str, ...], ...]
    truth: frozenset[str]


def raw_scores(queries: Sequence[Neighbours], names: Sequence[str], k: int,
               weighting: str = "similarity") -> dict[str, np.ndarray]:
    """Per label, each query's raw score with `k` voters."""
    votes = [vote(q.similarities, q.labels, k, weighting).scores for q in queries]
    return {name: np.array([v.get(name, 0.0) for v in votes]) for name in names}


def truths(queries: Sequence[Neighbours], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.array([name in q.truth for q in queries], np.float64) for name in names}


def label_names(queries: Sequence[Neighbours]) -> list[str]:
    """Every label the queries or their neighbours carry."""
    return sorted(set().union(*(q.truth for q in queries), *(set().union(*q.labels) for q in queries if q.labels)))


def mean_auc(raw: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> float:
    """The mean over labels with both classes present (nan when none has)."""
    found = [a for a in (auc(raw[name], truth[name]) for name in raw) if a is not None]
    return float(np.mean(found)) if found else float("nan")


def fit(queries: Sequence[Neighbours], grid: Sequence[int] = K_GRID, weighting: str = "similarity",
        fitted: dict | None = None) -> Calibration:
    """The k of `grid` whose raw scores rank best (mean AUC over labels; the smaller k on a tie), and a map
    per label fitted at that k. The AUC is rank-based, so choosing k does not depend on the maps."""
    if not queries:
        raise ValueError("no validation queries to calibrate on")
    names = label_names(queries)
    truth = truths(queries, names)
    by_k = {k: mean_auc(raw_scores(queries, names, k, weighting), truth) for k in grid}
    best = max(grid, key=lambda k: (np.nan_to_num(by_k[k], nan=-1.0), -k))
    about = dict(fitted or {}, queries=len(queries), mean_auc_by_k={str(k): round(v, 4) for k, v in by_k.items()},
                 positives={name: int(truth[name].sum()) for name in names})
    return Calibration.fit(raw_scores(queries, names, best, weighting), truth, best, weighting, about)


def auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when the truth has one class only."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        return None
    ranks = _average_ranks(scores)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for stop in range(1, len(values) + 1):
        if stop == len(values) or sorted_values[stop] != sorted_values[start]:
            ranks[order[start:stop]] = (start + stop + 1) / 2  # 1-based average rank of the tie
            start = stop
    return ranks


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE over `bins` equal-width bins of predicted probability: the share-weighted gap between the mean
    prediction and the observed frequency in each bin."""
    p, y = np.asarray(probabilities, np.float64), np.asarray(truth, np.float64)
    assert p.shape == y.shape, (p.shape, y.shape)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for number in range(bins):
        inside = which == number
        if inside.any():
            total += inside.sum() / len(p) * abs(p[inside].mean() - y[inside].mean())
    return float(total)
