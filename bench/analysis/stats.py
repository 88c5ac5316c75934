"""Bootstrap uncertainty and paired significance tests, computed from the records' per-sample scores.

Every matrix entry ``A[r][j]`` of a record is 100 x the mean of task j's per-sample scores in row r
(``scores[r][task]["per_sample"]``, see :mod:`bench.io.records`), so the metrics can be recomputed on
resampled test sets without rerunning anything.

**Bootstrap (Efron & Tibshirani 1993, ch. 6 and 13: the percentile interval).** One replicate b of a
configuration with K seed records:

1. for every task j with N_j counted test records, draw N_j records with replacement, i.e. counts
   ``c_b ~ Multinomial(N_j, 1/N_j)``, and recompute every row of every seed's matrix column j as
   ``A*_k[r][j] = 100 * sum_i c_b[i] * s_k[r][j][i] / N_j``;
2. draw K seeds with replacement and average their resampled matrices, ``A*_b = mean_k' A*_k'``;
3. apply :mod:`bench.analysis.metrics` (``last``, ``maa``, ``bwt``) to ``A*_b``; the diagonal cells are
   ``A*_b[t+1][t]`` (joint training: the last row, as the learnability table uses).

The 95% interval is the 2.5th and 97.5th percentile of ``RESAMPLES`` replicates. Test records are
resampled within each task (the same draw for every row of the matrix, since every row evaluates the
same records), and seeds as a second level when a configuration has several records.

**Paired bootstrap (Koehn 2004; Dror et al. 2018).** The draws depend only on (task, N_j, ``SEED``)
and on (K, ``SEED``), never on the method, so two configurations evaluated on the same test records
see the same resampled records (and, with the same number of seeds, the same resampled seed
positions, seeds in run-seed order) in every replicate. The difference of their replicates,
``d_b = m_b(X) - m_b(Y)``, is the paired bootstrap distribution of the difference: its 95% percentile
interval, and the two-sided achieved significance level ``p = min(1, 2 * min(P(d <= 0), P(d >= 0)))``
(Efron & Tibshirani, ch. 16). A difference is *significant* when its interval excludes 0. Pairs whose
test sets differ (another size or split description) are not compared. No correction for multiple
comparisons is applied.

The generator seeds are fixed, so the same records always give the same intervals.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from typing import Any, Sequence

import numpy as np

from bench.analysis import metrics
from bench.io.records import RecordError, decode_scores

RESAMPLES = 2000
SEED = 20240607
LEVEL = 95.0
KEYS = ("last", "maa", "bwt")


def per_sample_matrix(record: dict[str, Any]) -> list[np.ndarray] | None:
    """Per task (the record's task order) an array ``(matrix rows, N_j)`` of scores in [0, 1] over the
    records every row counts; None when any row's entry lacks per-sample scores (older records)."""
    scores = record.get("scores") or []
    if len(scores) != len(record["accuracy_matrix"]):
        return None
    out = []
    for task in record["tasks"]:
        rows = []
        for row in scores:
            entry = row.get(task) if isinstance(row, dict) else None
            if not isinstance(entry, dict) or "per_sample" not in entry:
                return None
            rows.append(decode_scores(entry["per_sample"]))
        if len({len(r) for r in rows}) != 1:
            raise RecordError(f"run record {record.get('run_id')!r}: {task} has per-sample scores of different "
                              "lengths in different rows")
        keep = [i for i in range(len(rows[0])) if all(r[i] is not None for r in rows)]
        out.append(np.array([[r[i] for i in keep] for r in rows], dtype=np.float64).reshape(len(rows), len(keep)))
    return out


def _test_sets(record: dict[str, Any], sizes: Sequence[int]) -> tuple:
    """What identifies the test records: per task its name, counted size and split description."""
    splits = (record.get("data") or {}).get("splits") or {}
    return tuple((t, n, json.dumps((splits.get(t) or {}).get("test"), sort_keys=True))
                 for t, n in zip(record["tasks"], sizes))


def _sample_counts(task: str, n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multinomial counts: how often each test record is drawn in each replicate."""
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), n])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _seed_draws(k: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, k) seed positions drawn with replacement (all zeros for a single seed)."""
    rng = np.random.default_rng([seed, 0x5EED, k])
    return rng.integers(0, k, size=(resamples, k))


def _metric_values(A: np.ndarray) -> dict[str, float | None]:
    M = A.tolist()
    return {"last": metrics.last(M), "maa": metrics.maa(M), "bwt": metrics.bwt(M)}


def _diagonal(A: np.ndarray) -> np.ndarray:
    """A[..., t+1, t] for a full continual matrix; joint training (2 rows): the last row."""
    rows, T = A.shape[-2], A.shape[-1]
    if rows == T + 1:
        return np.stack([A[..., t + 1, t] for t in range(T)], axis=-1)
    return A[..., -1, :]


@dataclasses.dataclass
class Replicates:
    """A configuration's point estimates and bootstrap replicates (``values[key]``: shape (B,), or None where
    the metric is undefined; ``diagonal``: shape (B, T))."""

    tasks: list[str]
    test_sets: tuple
    n_seeds: int
    point: dict[str, float | None]
    values: dict[str, np.ndarray | None]
    diagonal_point: np.ndarray
    diagonal: np.ndarray

    def interval(self, key: str, level: float = LEVEL) -> tuple[float, float] | None:
        v = self.values.get(key)
        return None if v is None else _percentile(v, level)

    def diagonal_intervals(self, level: float = LEVEL) -> dict[str, tuple[float, float]]:
        return {t: _percentile(self.diagonal[:, j], level) for j, t in enumerate(self.tasks)}


def _percentile(v: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(v, [(100 - level) / 2, 100 - (100 - level) / 2])
    return float(lo), float(hi)


def bootstrap(records: Sequence[dict[str, Any]], resamples: int = RESAMPLES, seed: int = SEED) -> Replicates | None:
    """Replicates of one configuration (its seed records, in the order given: run-seed order), or None when
    a record lacks per-sample scores, the records disagree on tasks, rows or test sets, or a task has no
    counted test record."""
    mats = [per_sample_matrix(r) for r in records]
    if not mats or any(m is None for m in mats):
        return None
    tasks = list(records[0]["tasks"])
    sizes = [m.shape[1] for m in mats[0]]
    test_sets = _test_sets(records[0], sizes)
    if min(sizes, default=0) == 0 or any(
            list(r["tasks"]) != tasks or [m.shape for m in mat] != [m.shape for m in mats[0]]
            or _test_sets(r, sizes) != test_sets for r, mat in zip(records, mats)):
        return None
    K, R, T = len(mats), mats[0][0].shape[0], len(tasks)
    per_seed = np.empty((resamples, K, R, T))
    for j, task in enumerate(tasks):
        S = np.stack([m[j] for m in mats])  # (K, R, N_j)
        counts = _sample_counts(task, sizes[j], resamples, seed)  # (B, N_j)
        per_seed[..., j] = np.einsum("krn,bn->bkr", S, counts) * (100.0 / sizes[j])
    draws = _seed_draws(K, resamples, seed)
    A = np.take_along_axis(per_seed, draws[:, :, None, None], axis=1).mean(axis=1)  # (B, R, T)
    point_matrix = np.stack([np.stack([m[j].mean(axis=1) for j in range(T)], axis=-1) for m in mats]).mean(0) * 100
    reps = [_metric_values(A[b]) for b in range(resamples)]
    values = {k: None if reps[0][k] is None else np.array([rep[k] for rep in reps]) for k in KEYS}
    return Replicates(tasks=tasks, test_sets=test_sets, n_seeds=K, point=_metric_values(point_matrix), values=values,
                      diagonal_point=_diagonal(point_matrix), diagonal=_diagonal(A))


@dataclasses.dataclass(frozen=True)
class Difference:
    """``point`` = m(X) - m(Y) on the full test sets; ``low``/``high`` its paired 95% interval; ``p`` the
    two-sided achieved significance level."""

    point: float
    low: float
    high: float
    p: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_difference(x: Replicates | None, y: Replicates | None, key: str, level: float = LEVEL) -> Difference | None:
    """The paired bootstrap difference of ``key`` between two configurations; None when either lacks
    per-sample scores, the metric is undefined for either, or their test sets differ."""
    if x is None or y is None or x.test_sets != y.test_sets:
        return None
    a, b = x.values.get(key), y.values.get(key)
    if a is None or b is None:
        return None
    d = a - b
    lo, hi = _percentile(d, level)
    p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return Difference(point=float(x.point[key] - y.point[key]), low=lo, high=hi, p=p)


def rank_groups(reps: Sequence[Replicates | None], key: str = "last") -> list[str]:
    """Compact letters for configurations given best first (by ``key``): the best configuration not yet
    lettered leads the next letter (A, B, ...), which every configuration ranked below it whose ``key`` is
    not significantly different from the leader's also receives. Configurations that share a letter are
    indistinguishable from that letter's leader; "" for a configuration without per-sample scores."""
    letters = [""] * len(reps)
    usable = [i for i, r in enumerate(reps) if r is not None and r.values.get(key) is not None]
    next_letter = 0
    for pos, leader in enumerate(usable):
        if letters[leader]:
            continue
        letter = _letter(next_letter)
        next_letter += 1
        for other in usable[pos:]:
            diff = paired_difference(reps[leader], reps[other], key)
            if other == leader or (diff is not None and not diff.significant):
                letters[other] += letter
    return letters


def _letter(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        out = chr(ord("A") + rem) + out
    return out
