"""CLI: user errors are one paragraph on stderr with exit code 2 and leave no record behind (names, values, budgets, data root, malformed CoIN files, missing images, unwritable output)."""
from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest

from bench.__main__ import main


@pytest.mark.parametrize("argv, needles", [
    (["run", "--method", "nope"], ["unknown method 'nope'", "seq-ft", "multitask"]),
    (["run", "--tasks", "textvqa,nope"], ["unknown task 'nope'", "scienceqa", "ocrvqa", "coin"]),
    (["run", "--preset", "huge"], ["unknown preset 'huge'", "tiny"]),
    (["run", "--set", "rnk=4"], ["unknown hyper-parameter 'rnk'", "rank=32"]),
    (["run", "--set", "rank=four"], ["expects int", "'rank'"]),
    (["run", "--set", "rank"], ["key=value"]),
    (["run", "--steps-per-task", "0"], ["--steps-per-task must be a positive integer"]),
    (["run", "--lr", "5"], ["--lr must be in (0, 1)"]),
    (["run", "--lr", "0"], ["--lr must be in (0, 1)"]),
    (["run", "--batch-size", "0"], ["--batch-size must be a positive integer"]),
    (["run", "--grad-accum", "-1"], ["--grad-accum must be a positive integer"]),
    (["run", "--limit-train", "0"], ["--limit-train must be a positive integer"]),
    (["run", "--limit-test", "-3"], ["--limit-test must be a positive integer"]),
    (["run", "--method", "moe-llava", "--set", "top_k=9"], ["top_k=9 exceeds num_experts=4"]),
    (["run", "--method", "cmoe", "--set", "probe_data_fraction=2"], ["probe_data_fraction"]),
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
    assert not list(out.glob("runs/*"))  # neither a record nor a run directory


SHORT = "Answer the question using a single word or phrase."


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.fixture
def coin_root(tmp_path) -> Path:
    """A minimal valid CoIN layout for VQAv2 and Grounding (two records per split, one image)."""
    root = tmp_path / "coin"
    (root / "cl_dataset" / "imgs").mkdir(parents=True)
    PIL.Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "cl_dataset" / "imgs" / "red.png")
    base = root / "Instructions_Original"
    train = [{"id": i, "image": "imgs/red.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhat colour?\n{SHORT}"}, {"from": "gpt", "value": "red"}]} for i in range(2)]
    _write(base / "VQAv2" / "train.json", train)
    _write(base / "VQAv2" / "val.json", [{"question_id": i, "image": "imgs/red.png", "text": f"What colour?\n{SHORT}",
                                          "answer": "red"} for i in range(2)])
    _write(base / "Grounding" / "train.json", [{"id": 1, "image": "imgs/red.png", "conversations": [
        {"from": "human", "value": "<image>\nbox: red"}, {"from": "gpt", "value": "[0.0, 0.0, 1.0, 1.0]"}]}])
    _write(base / "Grounding" / "test.json", [{"question_id": i, "image": "imgs/red.png", "text": "box: red",
                                               "answer_bbox": "[0.0, 0.0, 1.0, 1.0]", "size": [8, 8]} for i in range(2)])
    return root


def _edit(task_dir: str, name: str, change):
    def apply(root: Path) -> Path:
        path = root / "Instructions_Original" / task_dir / name
        data = json.loads(path.read_text())
        change(data)
        _write(path, data)
        return path
    return apply


def _raw(task_dir: str, name: str, text: str):
    def apply(root: Path) -> Path:
        path = root / "Instructions_Original" / task_dir / name
        path.write_text(text)
        return path
    return apply


BAD_DATA = [  # (task, damage, what the message must name besides the file)
    ("vqav2", _raw("VQAv2", "val.json", '[{"question_id": 1,\n "text": }]'), ["invalid JSON at line 2"]),
    ("vqav2", _raw("VQAv2", "val.json", '{"question_id": 1}'), ["expected a JSON list"]),
    ("vqav2", _edit("VQAv2", "val.json", lambda d: d[1].pop("text")), ["record 1", "field 'text'"]),
    ("vqav2", _edit("VQAv2", "val.json", lambda d: d[1].update(answer=3)), ["record 1", "field 'answer'"]),
    ("vqav2", _edit("VQAv2", "val.json", lambda d: d[0].update(question_id=[1])), ["record 0", "field 'question_id'"]),
    ("vqav2", _edit("VQAv2", "val.json", lambda d: d[1].update(question_id=0)),
     ["record 1", "field 'question_id'", "repeats record 0"]),
    ("vqav2", _edit("VQAv2", "val.json", lambda d: d[1].update(image="imgs/gone.png")),
     ["record 1", "field 'image'", "file not found"]),
    ("vqav2", _edit("VQAv2", "train.json", lambda d: d[0].pop("conversations")), ["record 0", "field 'conversations'"]),
    ("vqav2", _edit("VQAv2", "train.json", lambda d: d[1]["conversations"][1].update({"from": "human"})),
     ["record 1", "field 'conversations[1].from'"]),
    ("vqav2", _edit("VQAv2", "train.json", lambda d: d[1]["conversations"][0].update(value=7)),
     ["record 1", "field 'conversations[0].value'"]),
    ("grounding", _edit("Grounding", "test.json", lambda d: d[1].update(answer_bbox="[0.1, 0.2]")),
     ["record 1", "field 'answer_bbox'"]),
    ("grounding", _edit("Grounding", "test.json", lambda d: d[0].pop("size")), ["record 0", "field 'size'"]),
    ("vqav2", lambda root: (root / "Instructions_Original" / "VQAv2" / "val.json").unlink() or root, ["VQAv2"]),
]


@pytest.mark.parametrize("task, damage, needles", BAD_DATA)
def test_bad_coin_data_exits_2_before_any_training(coin_root, tmp_path, capsys, task, damage, needles):
    damaged = damage(coin_root)
    out = tmp_path / "results"
    assert main(["run", "--data-root", str(coin_root), "--tasks", task, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in [str(damaged)] * (damaged != coin_root) + needles:
        assert needle in err
    assert not list(out.glob("runs/*"))


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "--out", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--out" in err


def test_list_shows_methods_tasks_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("seq-ft", "multitask", "scienceqa", "ocrvqa", "coin", "tiny", "rank=32"):
        assert needle in out


def _subcommands(parser) -> list[list[str]]:
    """Every sub-command path of ``parser`` (``["run"]``, ``["base", "build"]``, ...), depth first."""
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if not sub.add_help:  # score, export, lmeval, perf: their own parser (below)
                    continue
                out.append([name])
                out += [[name, *rest] for rest in _subcommands(sub)]
    return out


def test_help_of_every_subcommand(capsys):
    """``--help`` renders for the top level and every sub-command (argparse formats each help string with
    ``%``, so a stray ``%`` in one fails here rather than for a user)."""
    from bench.__main__ import build_parser

    paths = _subcommands(build_parser())
    assert ["sweep"] in paths and ["check"] in paths and ["base", "build"] in paths
    for path in [[]] + paths:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*path, "--help"])
        assert exit_.value.code == 0, path
        assert "usage: python -m bench" in capsys.readouterr().out, path


@pytest.mark.parametrize("command", ["score", "export", "lmeval", "perf"])
def test_help_of_commands_that_own_their_flags(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as e:
        code = e.code
    assert code == 0 and capsys.readouterr().out.strip()


def test_the_command_line_imports_a_command_module_only_for_its_command():
    """``list`` and ``--help`` register ``sweep``, ``check`` and ``base`` by name only (their modules import
    the run loop); the sub-command about to run gets its own flags."""
    import subprocess
    import sys

    code = ("import sys; from bench.__main__ import build_parser; p = build_parser('sweep'); "
            "print(sorted(m for m in ('bench.sweeps.sweep', 'bench.analysis.check', 'bench.model.base_cmd', "
            "'bench.run.protocol') if m in sys.modules)); p.parse_args(['sweep', '--dry-run'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['bench.run.protocol',", "'bench.sweeps.sweep']"]
    code = "import sys; from bench.__main__ import build_parser; build_parser('list'); print('bench.run.protocol' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
