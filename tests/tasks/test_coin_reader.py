"""The real CoIN reader (tasks/coin.py) and the score CLI (tasks/score_cli.py) on a tiny CoIN layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import PIL.Image
import pytest

import tasks
from tasks import coin, score_cli
from tasks.base import DataSpec, TaskError

INSTR = "Instructions_Original"
SQA_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT = "Answer the question using a single word or phrase."


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def sqa_test(n: int = 10) -> list[dict]:
    """ScienceQA test records: int ids, every third one text-only, answers cycling A, B."""
    recs = []
    for i in range(n):
        rec = {"question_id": i, "text": f"Question {i}?\nA. yes\nB. no\n{SQA_SUFFIX}", "answer": "AB"[i % 2]}
        if i % 3:
            rec["image"] = "imgs/red.png"
        recs.append(rec)
    return recs


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A minimal CoIN data root: two images, five tasks' files and the three official side files."""
    cl = tmp_path / "cl_dataset"
    (cl / "imgs").mkdir(parents=True)
    PIL.Image.new("RGB", (8, 6), (255, 0, 0)).save(cl / "imgs" / "red.png")
    PIL.Image.new("L", (5, 5), 128).save(cl / "imgs" / "grey.png")
    base = tmp_path / INSTR
    write_json(base / "ScienceQA" / "train.json", [
        {"id": "t1", "image": "imgs/red.png",
         "conversations": [{"from": "human", "value": f"<image>\nWhat colour?\nA. red\nB. blue\n{SQA_SUFFIX}"},
                           {"from": "gpt", "value": "A"}]},
        {"id": 7, "conversations": [{"from": "human", "value": f"Is ice cold?\nA. yes\nB. no\n{SQA_SUFFIX}"},
                                    {"from": "gpt", "value": "A"}]},
    ])
    write_json(base / "ScienceQA" / "test.json", sqa_test())
    problems = {str(i): {"choices": ["yes", "no"], "answer": i % 2, "image": "image.png" if i % 3 else None}
                for i in range(12)}
    write_json(cl / "ScienceQA" / "problems.json", problems)
    write_json(cl / "ScienceQA" / "pid_splits.json", {"test": [str(i) for i in range(12)], "train": []})
    write_json(base / "Grounding" / "train.json", [
        {"id": 1, "image": "imgs/red.png", "conversations": [
            {"from": "human", "value": "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: red"},
            {"from": "gpt", "value": "[0.00, 0.12, 1.00, 0.88]"}]},
    ])
    write_json(base / "Grounding" / "test.json", [
        {"question_id": 100 + i, "image": "imgs/red.png", "size": [8, 6],
         "text": "Please provide the bounding box coordinate of the region this sentence describes: red",
         "answer_bbox": "[0.00, 0.12, 1.00, 0.88]"} for i in range(2)
    ])
    write_json(base / "TextVQA" / "val.json", [
        {"question_id": 31, "image": "imgs/grey.png", "text": f"What is written?\n{SHORT}", "answer": "stop"},
        {"question_id": 32, "image": "imgs/grey.png", "text": f"What brand?\n{SHORT}", "answer": "coke"},
    ])
    write_json(cl / "TextVQA" / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 31, "answers": ["stop"] * 10},
        {"question_id": 32, "answers": ["coke"] * 2 + ["coca cola"] * 8},
    ]})
    write_json(base / "GQA" / "test.json", [
        {"question_id": "201", "image": "imgs/red.png", "text": f"Is it red?\n{SHORT}", "answer": "Yes"},
        {"question_id": "202", "image": "imgs/red.png", "text": f"What colour?\n{SHORT}", "answer": "red"},
    ])
    write_json(cl / "GQA" / "testdev_balanced_questions.json", {
        "201": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr", "detailed": "x"}},
        "202": {"answer": "red", "isBalanced": False, "types": {"structural": "query", "semantic": "attr"}},
    })
    write_json(base / "ImageNet" / "test.json", [
        {"question_id": f"in{i}", "image": "imgs/red.png", "text": f"What is the object in the image?\n{SHORT}",
         "answer": name} for i, name in enumerate(["Tabby cat", "Goldfish", "Dandie dinmont"])
    ])
    return tmp_path


def spec(root: Path, **kw: Any) -> DataSpec:
    return DataSpec(data_root=str(root), **kw)


# ----------------------------------------------------------------------------- records

def test_scienceqa_test_split_records_refs_and_source(root: Path) -> None:
    split = tasks.get("scienceqa").load("test", spec(root))
    assert len(split) == 10
    r0, r1 = split[0], split[1]
    assert r0.question_id == "0" and r0.answer == "A" and r0.image is None
    assert r0.instruction == SQA_SUFFIX and r0.question.startswith("Question 0?")
    assert r1.image is not None and r1.image.size == (8, 6) and r1.image.mode == "RGB"
    assert r0.refs == {"has_image": False, "num_options": 2} and r1.refs["has_image"] is True
    path = root / INSTR / "ScienceQA" / "test.json"
    assert split.source["kind"] == "coin" and split.source["instructions"] == "Original"
    assert split.source["file"] == str(path) and split.source["n"] == 10
    assert split.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert split.source["side_files"] == [str(root / "cl_dataset" / "ScienceQA" / "problems.json")]
    assert split.references()[3] == {"question_id": "3", "answer": "B", "has_image": False, "num_options": 2}


def test_train_split_llava_format(root: Path) -> None:
    split = tasks.get("scienceqa").load("train", spec(root))
    prompts, answers = split.texts()
    assert prompts[0] == f"What colour?\nA. red\nB. blue\n{SQA_SUFFIX}"  # no <image> token
    assert answers == ["A", "A"]
    assert [r.question_id for r in split] == ["t1", "7"]
    assert split[1].image is None and split[0].refs == {}


def test_grounding_and_greyscale_images(root: Path) -> None:
    g = tasks.get("grounding").load("test", spec(root))
    assert g[0].answer == "[0.00, 0.12, 1.00, 0.88]" and g[0].refs == {"size": [8, 6]}
    assert g[0].question_id == "100"
    t = tasks.get("textvqa").load("test", spec(root))
    assert t[0].image.mode == "RGB" and t[0].image.size == (5, 5)  # "L" converted by Record


def test_images_are_decoded_lazily(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    real_open = PIL.Image.open

    def counting_open(*args: Any, **kwargs: Any) -> PIL.Image.Image:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    split = tasks.get("scienceqa").load("test", spec(root))
    assert opened == []
    stored = split.dataset.data.column("image").to_pylist()
    assert stored[0] is None
    assert stored[1] == {"bytes": None, "path": str(root / "cl_dataset" / "imgs" / "red.png")}
    split.texts()
    split.references()
    assert opened == []
    assert split[1].image.size == (8, 6)
    assert len(opened) == 1


def test_limits_are_deterministic_and_keep_order(root: Path) -> None:
    task = tasks.get("scienceqa")
    ids = [r["question_id"] for r in task.load("test", spec(root, limit_test=4)).references()]
    again = [r["question_id"] for r in task.load("test", spec(root, limit_test=4)).references()]
    assert ids == again and len(ids) == 4
    assert ids == sorted(ids, key=int)  # original order of the chosen records
    choices = {tuple(r["question_id"] for r in task.load("test", spec(root, limit_test=4, data_seed=s)).references())
               for s in range(6)}
    assert len(choices) > 1  # the seed matters
    full = task.load("test", spec(root, limit_test=50))
    assert len(full) == 10 and full.source["n_total"] == 10
    assert len(task.load("train", spec(root, limit_train=1, limit_test=2))) == 1


def test_val_json_is_accepted_when_test_json_is_absent(root: Path) -> None:
    folder = root / INSTR / "ScienceQA"
    (folder / "test.json").rename(folder / "val.json")
    split = tasks.get("scienceqa").load("test", spec(root))
    assert split.source["file"].endswith("val.json") and len(split) == 10


def test_missing_json_file_names_path_and_expectation(root: Path) -> None:
    with pytest.raises(TaskError) as err:
        tasks.get("vqav2").load("test", spec(root))
    msg = str(err.value)
    assert str(root / INSTR / "VQAv2" / "val.json") in msg and "test.json" in msg
    assert "Instructions_Original" in msg
    with pytest.raises(TaskError, match="Instructions_Diverse.*train.json"):
        tasks.get("gqa").load("train", spec(root, instructions="Diverse"))


# ----------------------------------------------------------------------------- malformed input

def _mutate(task_dir: str, name: str, change: Callable[[list], Any]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / INSTR / task_dir / name
        data = json.loads(path.read_text())
        change(data)
        write_json(path, data)
    return apply


def _set(index: int, key: str, value: Any) -> Callable[[list], None]:
    return lambda data: data[index].__setitem__(key, value)


def _delete(index: int, key: str) -> Callable[[list], None]:
    return lambda data: data[index].pop(key)


BAD_RECORDS = [
    ("scienceqa", "test", "ScienceQA", "test.json", _delete(1, "text"), "text"),
    ("scienceqa", "test", "ScienceQA", "test.json", _set(1, "answer", 1), "answer"),
    ("scienceqa", "test", "ScienceQA", "test.json", _set(1, "answer", "F"), "answer"),
    ("scienceqa", "test", "ScienceQA", "test.json", _set(1, "image", "imgs/nope.png"), "image"),
    ("scienceqa", "test", "ScienceQA", "test.json", _set(1, "question_id", [1]), "question_id"),
    ("scienceqa", "test", "ScienceQA", "test.json", _set(1, "question_id", "0"), "question_id"),  # repeats record 0
    ("scienceqa", "train", "ScienceQA", "train.json",
     lambda d: d[1]["conversations"][1].__setitem__("from", "human"), "conversations[1].from"),
    ("scienceqa", "train", "ScienceQA", "train.json",
     lambda d: d[1]["conversations"].append({"from": "human", "value": "more"}), "conversations"),
    ("grounding", "test", "Grounding", "test.json", _set(1, "answer_bbox", "[0.1, 0.2, 0.3]"), "answer_bbox"),
    ("grounding", "test", "Grounding", "test.json", _set(1, "answer_bbox", "[0.1, 0.2, 0.3, high]"), "answer_bbox"),
    ("grounding", "test", "Grounding", "test.json", _delete(1, "size"), "size"),
    ("grounding", "test", "Grounding", "test.json", _set(1, "size", [8]), "size"),
    ("grounding", "train", "Grounding", "train.json",
     lambda d: d.append({"id": 2, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a box"}]}),
     "conversations[1].value"),
]


@pytest.mark.parametrize("task, split, task_dir, name, change, field", BAD_RECORDS)
def test_malformed_record_names_file_index_and_field(root: Path, task: str, split: str, task_dir: str, name: str,
                                                     change: Callable[[list], Any], field: str) -> None:
    _mutate(task_dir, name, change)(root)
    with pytest.raises(TaskError) as err:
        tasks.get(task).load(split, spec(root))
    msg = str(err.value)
    assert str(root / INSTR / task_dir / name) in msg
    assert "record 1:" in msg
    assert f"field '{field}'" in msg


def test_duplicate_test_question_id_names_both_records(root: Path) -> None:
    # 4 and "4" are the same id once stored as strings: predictions could not be matched to either.
    _mutate("ScienceQA", "test.json", _set(7, "question_id", 4))(root)
    _mutate("ScienceQA", "test.json", _set(4, "question_id", "4"))(root)
    path = root / INSTR / "ScienceQA" / "test.json"
    with pytest.raises(TaskError) as err:
        tasks.get("scienceqa").load("test", spec(root))
    assert str(err.value) == (f"{path}: record 7: field 'question_id': '4' repeats record 4; "
                              "test question ids must be unique")
    with pytest.raises(TaskError, match="record 7: field 'question_id': '4' repeats record 4"):
        coin.read_annotations(tasks.get("scienceqa"), path)
    # Train records are never matched by id: a repeated train id is accepted.
    _mutate("ScienceQA", "train.json", lambda d: d[1].__setitem__("id", "t1"))(root)
    assert len(tasks.get("scienceqa").load("train", spec(root))) == 2


def test_malformed_json_and_wrong_top_level(root: Path) -> None:
    path = root / INSTR / "GQA" / "test.json"
    path.write_text('[{"question_id": "1",\n "text": }]')
    with pytest.raises(TaskError, match=r"test\.json: invalid JSON at line 2"):
        tasks.get("gqa").load("test", spec(root))
    write_json(path, {"question_id": "1"})
    with pytest.raises(TaskError, match="expected a JSON list"):
        tasks.get("gqa").load("test", spec(root))


def test_side_file_missing_question_is_an_error(root: Path) -> None:
    write_json(root / "cl_dataset" / "TextVQA" / "TextVQA_0.5.1_val.json", {"data": [{"question_id": 31, "answers": ["a"] * 10}]})
    with pytest.raises(TaskError) as err:
        tasks.get("textvqa").load("test", spec(root))
    msg = str(err.value)
    assert "val.json: record 1: field 'question_id'" in msg and "TextVQA_0.5.1_val.json" in msg


# ----------------------------------------------------------------------------- side files and scoring

def test_side_files_fill_refs(root: Path) -> None:
    t = tasks.get("textvqa").load("test", spec(root)).references()
    assert t[1]["answers"] == ["coke"] * 2 + ["coca cola"] * 8
    g = tasks.get("gqa").load("test", spec(root)).references()
    assert g[0] == {"question_id": "201", "answer": "Yes", "official_answer": "yes", "is_balanced": True,
                    "types": {"structural": "verify", "semantic": "attr"}}
    assert g[1]["is_balanced"] is False


def test_side_files_are_optional(root: Path) -> None:
    (root / "cl_dataset" / "TextVQA" / "TextVQA_0.5.1_val.json").unlink()
    split = tasks.get("textvqa").load("test", spec(root))
    assert split.source["side_files"] == [] and "answers" not in split.references()[0]
    result = tasks.get("textvqa").score(["STOP.", "coca cola"], split)
    assert result.per_sample == [1.0, 0.0] and result.extras["single_answer_fallback"] == 2


def test_task_score_on_loaded_split(root: Path) -> None:
    task = tasks.get("gqa")
    split = task.load("test", spec(root))
    result = task.score(["Yes.", "blue"], split)
    assert result.n == 1 and result.accuracy == 100.0  # question 202 is unbalanced


def test_read_annotations_needs_no_images(root: Path) -> None:
    (root / "cl_dataset" / "imgs" / "red.png").unlink()
    ann = root / INSTR / "Grounding" / "test.json"
    refs = coin.read_annotations(tasks.get("grounding"), ann)
    assert refs[0] == {"question_id": "100", "answer": "[0.00, 0.12, 1.00, 0.88]", "size": [8, 6]}
    with pytest.raises(TaskError, match="field 'image'"):
        tasks.get("grounding").load("test", spec(root))


def test_read_annotations_scienceqa_iterates_all_test_problems(root: Path) -> None:
    ann = root / INSTR / "ScienceQA" / "test.json"
    refs = coin.read_annotations(tasks.get("scienceqa"), ann, root / "cl_dataset" / "ScienceQA")
    assert [r["question_id"] for r in refs] == [str(i) for i in range(12)]
    assert refs[11] == {"question_id": "11", "answer": "B", "num_options": 2, "has_image": True}


# ----------------------------------------------------------------------------- score CLI

def write_predictions(path: Path, rows: list[tuple[Any, str]]) -> Path:
    path.write_text("".join(json.dumps({"question_id": q, "prompt": "p", "text": t, "answer_id": "x",
                                        "model_id": "m", "metadata": {}}) + "\n" for q, t in rows))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = score_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_textvqa_with_side_file(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = write_predictions(tmp_path / "merge.jsonl", [(32, "Coca-Cola"), (31, "Stop")])  # any order
    code, out, err = run_cli(capsys, "score", "--task", "textvqa", "--predictions", preds,
                             "--annotations", root / INSTR / "TextVQA" / "val.json",
                             "--side-file", root / "cl_dataset" / "TextVQA" / "TextVQA_0.5.1_val.json")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    # "Coca-Cola" -> "coca cola": 8 of 10 annotators -> soft score 1.0
    assert result["task"] == "textvqa" and result["mode"] == "official" and result["n"] == 2
    assert result["accuracy"] == 100.0 and result["missing"] == 0


def test_cli_scienceqa_missing_predictions_count_wrong(root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    side = root / "cl_dataset" / "ScienceQA"
    args = ["--task", "scienceqa", "--annotations", root / INSTR / "ScienceQA" / "test.json",
            "--side-file", side / "pid_splits.json", "--side-file", side / "problems.json"]
    preds = write_predictions(tmp_path / "merge.jsonl", [(str(r["question_id"]), r["answer"]) for r in sqa_test()])
    code, out, _ = run_cli(capsys, *args, "--predictions", preds)
    result = json.loads(out)
    assert code == 0 and result["n"] == 12 and result["missing"] == 2  # all 12 test problems count
    assert result["accuracy"] == 10 / 12 * 100 and result["printed"] == "83.33"
    # eval_science_qa.py keys predictions by the id as written: the integer 3 never finds problem "3".
    preds = write_predictions(tmp_path / "merge.jsonl", [(r["question_id"], r["answer"]) for r in sqa_test()])
    code, out, _ = run_cli(capsys, *args, "--predictions", preds)
    assert code == 0 and json.loads(out)["accuracy"] == 0.0 and json.loads(out)["missing"] == 12
    code, out, _ = run_cli(capsys, *args, "--predictions", preds, "--mode", "clean")  # clean matches str(id)
    assert code == 0 and json.loads(out)["accuracy"] == 10 / 12 * 100


def test_cli_imagenet_aligns_by_position_and_clean_mode(root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    preds = write_predictions(tmp_path / "merge.jsonl", [("in2", "tabby cat"), ("in1", ""), ("in0", "Dandie")])
    ann = root / INSTR / "ImageNet" / "test.json"
    code, out, _ = run_cli(capsys, "--task", "imagenet", "--predictions", preds, "--annotations", ann)
    # by line position: "tabby cat" vs "Tabby cat" is wrong (case), "" and "Dandie" count
    assert code == 0 and json.loads(out)["accuracy"] == 100.0 * 2 / 3
    code, out, _ = run_cli(capsys, "--task", "imagenet", "--predictions", preds, "--annotations", ann, "--mode", "clean")
    # by question id: "tabby cat" is in2's (Dandie dinmont), "" is wrong, "Dandie" is not "Tabby cat"
    assert code == 0 and json.loads(out)["mode"] == "clean" and json.loads(out)["accuracy"] == 0.0


@pytest.mark.parametrize("case, needle", [
    ("unknown_id", "'999' is not a question id of"),
    ("missing_predictions", "predictions file not found"),
    ("bad_task", "valid tasks: scienceqa"),
    ("bad_mode", "valid modes: official, clean"),
    ("bad_line", "line 2: field 'text'"),
    ("side_for_imagenet", "no official side file"),
])
def test_cli_errors_exit_2_with_one_message(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            case: str, needle: str) -> None:
    ann = root / INSTR / "GQA" / "test.json"
    preds = write_predictions(tmp_path / "merge.jsonl", [("201", "yes"), ("999", "no")])
    args: list[Any] = ["--task", "gqa", "--predictions", preds, "--annotations", ann]
    if case == "missing_predictions":
        args[3] = tmp_path / "absent.jsonl"
    elif case == "bad_task":
        args[1] = "mnist"
    elif case == "bad_mode":
        args += ["--mode", "lenient"]
    elif case == "bad_line":
        preds.write_text(json.dumps({"question_id": "201", "text": "yes"}) + "\n" + json.dumps({"question_id": "202"}) + "\n")
    elif case == "side_for_imagenet":
        args = ["--task", "imagenet", "--predictions", preds, "--annotations", root / INSTR / "ImageNet" / "test.json",
                "--side-file", ann]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert needle in err and err.count("\n") == 1


def test_cli_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--task", "gqa")
    assert code == 2 and "--predictions" in err


def test_read_annotations_scienceqa_side_file_errors(root: Path) -> None:
    ann = root / INSTR / "ScienceQA" / "test.json"
    side = root / "cl_dataset" / "ScienceQA" / "problems.json"
    write_json(ann, sqa_test(13))  # problem 12 is not in problems.json
    with pytest.raises(TaskError, match=r"test\.json: record 12: field 'question_id': '12' not found in side file"):
        coin.read_annotations(tasks.get("scienceqa"), ann, side)
    write_json(ann, sqa_test(3))
    (side.parent / "pid_splits.json").unlink()
    with pytest.raises(TaskError, match="pid_splits.json"):
        coin.read_annotations(tasks.get("scienceqa"), ann, side)
    assert coin.read_annotations(tasks.get("scienceqa"), ann)[1] == {"question_id": "1", "answer": "B", "has_image": True}
