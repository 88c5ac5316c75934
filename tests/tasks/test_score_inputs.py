"""``bench score`` inputs: repeated ``--side-file``, the fallbacks without side files, what official
mode does and does not read, and blank lines (an error in official mode, as in the scripts)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tasks import score_cli, side_files
from tasks.base import TaskError

CASES = Path(__file__).resolve().parent / "official_cases"


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, Any, str]:
    code = score_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def copy_case(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(CASES / name, tmp_path / name.replace("/", "_")))


def test_scienceqa_side_files_in_any_order_or_as_their_folder(tmp_path: Path) -> None:
    sqa = copy_case(tmp_path, "scienceqa/partial") / "cl_dataset" / "ScienceQA"
    both = {"problems": sqa / "problems.json", "splits": sqa / "pid_splits.json"}
    assert side_files.resolve("scienceqa", [sqa / "pid_splits.json", sqa / "problems.json"]) == both
    assert side_files.resolve("scienceqa", [sqa]) == both
    assert side_files.resolve("scienceqa", [sqa / "problems.json"]) == both  # the other one beside it
    with pytest.raises(TaskError, match="gives the problems file twice"):
        side_files.resolve("scienceqa", [sqa, sqa / "problems.json"])
    with pytest.raises(TaskError, match="gives the answers file twice"):
        side_files.resolve("textvqa", ["a.json", "b.json"])
    with pytest.raises(TaskError, match="no official side file"):
        side_files.resolve("vizwiz", ["a.json"])
    (sqa / "pid_splits.json").unlink()
    with pytest.raises(TaskError, match="side file not found: .*pid_splits.json"):
        side_files.resolve("scienceqa", [sqa / "problems.json"])


@pytest.mark.parametrize("case, side, figure", [
    ("textvqa/partial", "cl_dataset/TextVQA/TextVQA_0.5.1_val.json", "87.50"),
    ("gqa/partial", "cl_dataset/GQA/testdev_balanced_questions.json", "66.67"),
    ("scienceqa/partial", "cl_dataset/ScienceQA", "16.67"),
])
def test_side_file_scripts_do_not_read_the_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       case: str, side: str, figure: str) -> None:
    folder = copy_case(tmp_path, case)
    task = case.split("/")[0]
    args = ["--task", task, "--predictions", folder / "merge.jsonl", "--side-file", folder / side]
    code, out, err = run(capsys, *args)  # no --annotations at all
    assert code == 0 and out["printed"] == figure and "fallback" not in out, err
    assert str(folder / side) in " ".join(out["inputs"])
    assert all(Path(p).name not in ("val.json", "test.json") for p in out["inputs"])
    code, out, err = run(capsys, *args, "--annotations", tmp_path / "absent.json")  # given, not read
    assert code == 0 and out["printed"] == figure, err
    code, _, err = run(capsys, *args, "--mode", "clean")
    assert code == 2 and "--annotations is needed in --mode clean" in err


def test_fallbacks_without_side_files_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_case(tmp_path, "textvqa/partial")
    code, out, _ = run(capsys, "--task", "textvqa", "--predictions", folder / "merge.jsonl",
                       "--annotations", folder / "val.json")
    # each CoIN answer ten times: 101 "coke" vs "coca cola" 0, 102 "x ray" vs "xray" 0, 115 "Dog." 1, 113 1
    assert code == 0 and out["accuracy"] == 50.0 and out["single_answer_fallback"] == 4 and "fallback" in out
    folder = copy_case(tmp_path, "gqa/partial")
    code, out, _ = run(capsys, "--task", "gqa", "--predictions", folder / "merge.jsonl", "--annotations",
                       folder / "test.json")
    # CoIN answers are capitalised ("Red", "Yes"): the official comparison is exact, so nothing matches
    assert code == 0 and out["accuracy"] == 0.0 and out["n"] == 3 and "fallback" in out
    folder = copy_case(tmp_path, "scienceqa/partial")
    code, out, _ = run(capsys, "--task", "scienceqa", "--predictions", folder / "merge.jsonl",
                       "--annotations", folder / "test.json")
    assert code == 0 and out["printed"] == "16.67" and out["n"] == 6 and "fallback" in out
    code, _, err = run(capsys, "--task", "textvqa", "--predictions", folder / "merge.jsonl")
    assert code == 2 and "--annotations is needed" in err


def test_blank_line_stops_official_mode_and_is_skipped_in_clean(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_case(tmp_path, "vizwiz/partial")
    merge = folder / "merge.jsonl"
    merge.write_text(merge.read_text() + "\n")
    args = ["--task", "vizwiz", "--predictions", merge, "--annotations", folder / "val.json"]
    code, _, err = run(capsys, *args)
    assert code == 2 and "line 4: invalid JSON (a blank line)" in err
    code, out, _ = run(capsys, *args, "--mode", "clean")
    assert code == 0 and out["accuracy"] == 25.0


def test_output_fields(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "vizwiz" / "quirks")
    code, out, _ = run(capsys, "--task", "vizwiz", "--predictions", "merge.jsonl", "--annotations", "val.json")
    assert code == 0
    assert out == {"task": "vizwiz", "mode": "official", "n": 8, "accuracy": 62.5, "printed": "62.50",
                   "n_predictions": 8, "n_annotations": 8, "missing": 1, "repeated": 1,
                   "inputs": ["val.json", "merge.jsonl"], "script_commit": "4122465"}
    code, _, err = run(capsys, "--task", "vizwiz", "--predictions", "merge.jsonl")
    assert code == 2 and "--annotations is needed: eval_vizwiz.py reads" in err
