"""Metrics against matrices computed by hand."""
import math

import pytest

from bench.analysis import metrics

# rows: base, after task 1, after task 2, after task 3; columns: task 1..3
A = [
    [10.0, 20.0, 5.0],
    [80.0, 30.0, 10.0],
    [50.0, 90.0, 15.0],
    [40.0, 60.0, 70.0],
]


def test_last_mft_maa():
    assert metrics.last(A) == pytest.approx((40 + 60 + 70) / 3)
    assert metrics.mft(A) == pytest.approx((80 + 90 + 70) / 3)
    # stage means: [80], [50, 90], [40, 60, 70]
    assert metrics.maa(A) == pytest.approx((80 + 70 + 170 / 3) / 3)


def test_bwt_forgetting_fwt():
    # BWT: ((40-80) + (60-90)) / 2
    assert metrics.bwt(A) == pytest.approx(-35.0)
    # Forgetting: task1 max(80, 50) - 40 = 40; task2 max(90) - 60 = 30 -> 35
    assert metrics.forgetting(A) == pytest.approx(35.0)
    # FWT: task2 A[1][2] - A[0][2] = 30-20 = 10; task3 A[2][3] - A[0][3] = 15-5 = 10 -> 10
    assert metrics.fwt(A) == pytest.approx(10.0)


def test_forgetting_uses_best_earlier_row_not_diagonal():
    B = [[0, 0], [50, 0], [30, 80]]
    assert metrics.forgetting(B) == pytest.approx(20.0)
    C = [[0, 0, 0], [50, 0, 0], [70, 60, 0], [40, 60, 90]]  # task 1 improved after task 2, then fell
    assert metrics.forgetting(C) == pytest.approx(((70 - 40) + (60 - 60)) / 2)
    assert metrics.bwt(C) == pytest.approx(((40 - 50) + (60 - 60)) / 2)


def test_joint_record_has_only_last():
    J = [[10.0, 20.0, 5.0], [70.0, 80.0, 90.0]]
    s = metrics.summarize(J)
    assert s["last"] == pytest.approx(80.0)
    assert s["mft"] is None and s["bwt"] is None and s["fwt"] is None and s["maa"] is None
    assert s["metric_defs_version"] == metrics.METRIC_DEFS_VERSION


def test_single_task_has_no_backward_metrics():
    s = metrics.summarize([[0.0], [55.0]])
    assert s["last"] == 55.0 and s["mft"] == 55.0 and s["bwt"] is None and s["forgetting"] is None
    assert not math.isnan(s["maa"])
