"""``bench score`` against the official CoIN scripts themselves, on hand-made prediction files.

Each folder ``official_cases/<task>/<case>/`` holds the files of one call (``merge.jsonl``, the CoIN
test/val JSON and the side files under ``cl_dataset/``) and ``expected.json``: what the unchanged
official script of ``zackschen/CoIN`` at commit 4122465 printed when run on a copy of the folder
(``command``, ``run``, ``stdout``; ``official.printed`` is its accuracy, ``official.error`` the last
line of its traceback when it stopped), the ``bench score`` arguments of the same call, and what
``--mode clean`` gives with the reason it differs (``clean``, ``clean_differs``). The scripts are not
part of this repository.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tasks
from tasks import score_cli

CASES = Path(__file__).resolve().parent / "official_cases"
EXPECTED = sorted(CASES.glob("*/*/expected.json"))


def case_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}"


def score(case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str],
          mode: str) -> tuple[int, Any, str]:
    monkeypatch.chdir(case)  # the stored arguments are relative to the case folder, as the command ran
    code = score_cli.main(args + ["--mode", mode])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_every_task_has_cases_with_a_figure_and_with_a_stop() -> None:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for path in EXPECTED:
        by_task.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    assert sorted(by_task) == sorted(tasks.names())
    for task, cases in by_task.items():
        assert sum("printed" in c["official"] for c in cases) >= 2, task  # edge cases and a partial file
        assert any("error" in c["official"] for c in cases), task        # and one the script stops on
        for c in cases:
            assert c["commit"] == "4122465" and c["command"].startswith("python -m ETrain.Eval.LLaVA.CoIN.")
            assert c["script"].startswith("ETrain/Eval/LLaVA/CoIN/") and c["covers"] and c["clean_differs"]


@pytest.mark.parametrize("expected_path", EXPECTED, ids=case_id)
def test_official_mode_prints_what_the_script_prints(expected_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads(expected_path.read_text())
    official = expected["official"]
    code, result, err = score(expected_path.parent, monkeypatch, capsys, expected["bench_score"], "official")
    if "error" in official:  # the script raised: no figure, a one-line error naming the file and field
        assert code == 2 and err.startswith("bench score: error: ") and err.count("\n") == 1, err
        return
    assert code == 0, err
    assert result["mode"] == "official" and result["task"] == expected["task"]
    assert result["printed"] == official["printed"] == f"{result['accuracy']:.2f}"
    assert abs(result["accuracy"] - float(official["printed"])) <= 0.005
    if "samples_printed" in official and expected["task"] not in ("ocrvqa", "scienceqa"):
        assert result["n"] == official["samples_printed"]  # eval_ocrvqa.py prints 0 here (its own bug)
    if expected["task"] == "scienceqa":
        assert result["n"] == official["samples_printed"]  # "Total: N", every test problem
    if expected["task"] == "gqa":
        for key in ("binary", "open", "distribution"):
            assert f"{result[key]:.2f}" == official[key], key
        for key in ("per_structural_type", "per_semantic_type", "per_steps", "per_length"):
            assert {t: [f"{v[0]:.2f}", v[1]] for t, v in result[key].items()} == official[key], key


@pytest.mark.parametrize("expected_path", EXPECTED, ids=case_id)
def test_clean_mode_differs_only_as_documented(expected_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads(expected_path.read_text())
    code, result, err = score(expected_path.parent, monkeypatch, capsys, expected["bench_score"], "clean")
    if "error" in expected["clean"]:
        assert code == 2 and expected["clean"]["error"] in err and err.count("\n") == 1, err
    else:
        assert code == 0 and result["mode"] == "clean", err
        assert f"{result['accuracy']:.2f}" == expected["clean"]["printed"]
