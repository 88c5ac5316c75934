"""CLI: user errors are one paragraph on stderr with exit code 2 and leave no record behind."""
from __future__ import annotations

import pytest

from bench.__main__ import main


@pytest.mark.parametrize("argv, needles", [
    (["run", "--method", "nope"], ["unknown method 'nope'", "seq-ft", "multitask"]),
    (["run", "--tasks", "textvqa,nope"], ["unknown task 'nope'", "scienceqa", "ocrvqa", "coin"]),
    (["run", "--preset", "huge"], ["unknown preset 'huge'", "tiny"]),
    (["run", "--set", "rnk=4"], ["unknown hyper-parameter 'rnk'", "rank=16"]),
    (["run", "--set", "rank=four"], ["expects int", "'rank'"]),
    (["run", "--set", "rank"], ["key=value"]),
    (["run", "--steps-per-task", "0"], ["--steps-per-task must be a positive integer"]),
    (["run", "--lr", "5"], ["--lr must be in (0, 1)"]),
    (["run", "--data-root", "/nonexistent/coin"], ["is not a directory", "Instructions_"]),
    (["run", "--model", "/nonexistent/llava"], ["local llava-hf checkpoint"]),
])
def test_bad_input_exits_2(argv, needles, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    for needle in needles:
        assert needle in err
    assert not list(out.glob("runs/*.json"))


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "--out", str(blocker / "results")]) == 2
    assert "--out" in capsys.readouterr().err


def test_list_shows_methods_tasks_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("seq-ft", "multitask", "scienceqa", "ocrvqa", "coin", "tiny", "rank=16"):
        assert needle in out
