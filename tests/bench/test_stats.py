"""The bootstrap on hand-made records where the answer is known: identical methods are never
significantly different, a method right on every sample the other misses always is, intervals contain
the point estimates, and the same records give the same numbers."""
from __future__ import annotations

import numpy as np
import pytest

from bench.analysis import metrics

from bench.analysis import stats
from bench.io.records import encode_scores

TASKS = ["alpha", "beta", "gamma"]
N = 60


def make_record(per_sample: np.ndarray, seed: int = 0, run_id: str = "r") -> dict:
    """A record from per-sample scores of shape (rows, tasks, N); the matrix is their mean (percent)."""
    matrix = (per_sample.mean(axis=2) * 100).round(4).tolist()
    scores = [{t: {"accuracy": matrix[r][j], "n": per_sample.shape[2],
                   "per_sample": encode_scores(per_sample[r, j].tolist())} for j, t in enumerate(TASKS)}
              for r in range(per_sample.shape[0])]
    return {"run_id": run_id, "tasks": TASKS, "accuracy_matrix": matrix, "scores": scores,
            "metrics": metrics.summarize(matrix), "seeds": {"run": seed},
            "data": {"splits": {t: {"test": {"n": per_sample.shape[2]}} for t in TASKS}}}


def random_scores(seed: int, p: float = 0.5, rows: int = len(TASKS) + 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, len(TASKS), N)) < p).astype(float)


def test_identical_methods_are_not_significantly_different():
    s = random_scores(1)
    x, y = stats.bootstrap([make_record(s)]), stats.bootstrap([make_record(s.copy(), run_id="other")])
    for key in ("last", "bwt"):
        d = stats.paired_difference(x, y, key)
        assert d.point == 0 and d.low == 0 and d.high == 0 and d.p == 1.0 and not d.significant
    assert stats.rank_groups([x, y]) == ["A", "A"]


def test_a_method_right_on_every_sample_the_other_misses_is_significantly_better():
    weak = random_scores(2, p=0.4)
    for t in range(len(TASKS)):
        weak[t + 1, t] = 1.0  # the weak method learns each task, then forgets it: BWT about -60
    strong = weak.copy()
    strong[1:] = 1.0  # right on every sample after every stage, including all the weak method misses: BWT 0
    x, y = stats.bootstrap([make_record(strong)]), stats.bootstrap([make_record(weak)])
    last = stats.paired_difference(x, y, "last")
    assert last.significant and last.low > 0 and last.p < 0.001
    assert last.point == pytest.approx(100 - weak[-1].mean() * 100)
    bwt = stats.paired_difference(x, y, "bwt")
    assert bwt.point > 0 and bwt.significant
    # the reverse difference has the opposite sign and is as significant
    back = stats.paired_difference(y, x, "last")
    assert back.high < 0 and back.significant
    assert stats.rank_groups([x, y]) == ["A", "B"]


def test_one_answer_of_sixty_is_not_a_significant_difference():
    a = random_scores(3)
    b = a.copy()
    j = int(np.argmin(b[-1, 0]))
    b[-1, 0, j] = 1.0  # one more right answer on one task after the last stage
    d = stats.paired_difference(stats.bootstrap([make_record(b)]), stats.bootstrap([make_record(a)]), "last")
    assert d.point == pytest.approx(100 / N / len(TASKS)) and not d.significant and d.low <= 0 < d.high


def test_intervals_contain_the_point_estimates_and_points_match_the_record_metrics():
    records = [make_record(random_scores(10 + k), seed=k, run_id=f"r{k}") for k in range(2)]
    rep = stats.bootstrap(records)
    assert rep.n_seeds == 2
    for key in ("last", "maa", "bwt"):
        mean = sum(r["metrics"][key] for r in records) / 2
        assert rep.point[key] == pytest.approx(mean, abs=1e-3)
        lo, hi = rep.interval(key)
        assert lo < rep.point[key] < hi and hi - lo < 40
    for j, (t, (lo, hi)) in enumerate(rep.diagonal_intervals().items()):
        diag = sum(r["accuracy_matrix"][j + 1][j] for r in records) / 2
        assert rep.diagonal_point[j] == pytest.approx(diag, abs=1e-3) and lo <= diag <= hi


def test_the_same_records_give_the_same_replicates():
    rec = make_record(random_scores(4))
    a, b = stats.bootstrap([rec]), stats.bootstrap([rec])
    assert all(np.array_equal(a.values[k], b.values[k]) for k in ("last", "maa", "bwt"))
    assert np.array_equal(a.diagonal, b.diagonal)
    c = stats.bootstrap([rec], seed=stats.SEED + 1)
    assert not np.array_equal(a.values["last"], c.values["last"])  # the draws do depend on the seed


def test_records_without_per_sample_scores_or_with_other_test_sets_give_no_interval():
    rec = make_record(random_scores(5))
    old = {**rec, "scores": [{t: {k: v for k, v in e.items() if k != "per_sample"} for t, e in row.items()}
                             for row in rec["scores"]]}
    assert stats.bootstrap([old]) is None
    rep = stats.bootstrap([rec])
    assert stats.paired_difference(rep, None, "last") is None
    assert stats.rank_groups([rep, None]) == ["A", ""]
    other = make_record(random_scores(5))
    other["data"]["splits"]["alpha"]["test"]["n"] = 999  # described as another test split
    assert stats.paired_difference(rep, stats.bootstrap([other]), "last") is None


def test_joint_training_has_last_but_no_bwt_and_its_diagonal_is_the_last_row():
    rec = make_record(random_scores(6, rows=2))
    rep = stats.bootstrap([rec])
    assert rep.values["bwt"] is None and rep.interval("maa") is None
    assert rep.diagonal_point.tolist() == pytest.approx(rec["accuracy_matrix"][-1])
    assert rep.interval("last")[0] < rep.point["last"]
