"""coin-mini exported in the real CoIN layout reads back, through the real reader, as the same records."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tasks
from tasks import coin
from tasks.base import DataSpec
from tasks.export import export_suite, main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    spec = DataSpec(mini_train=20, mini_test=10, cache_dir=str(root / "cache"))
    return spec, export_suite(root / "coin", spec)


def _pixels(image):
    return None if image is None else np.asarray(image.convert("RGB"))


def test_layout_and_llava_formats(exported):
    _, out = exported
    for task in tasks.suite("coin"):
        folder = out / "Instructions_Original" / task.coin_dir
        train = json.loads((folder / "train.json").read_text())
        test = json.loads((folder / task.test_file).read_text())
        assert len(train) == 20 and len(test) == 10
        for rec in train:
            human, gpt = rec["conversations"]
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            assert human["value"].startswith("<image>\n") == ("image" in rec)
            if "image" in rec:
                assert (out / "cl_dataset" / rec["image"]).is_file()
        for rec in test:
            assert "<image>" not in rec["text"]
            assert ("answer_bbox" in rec and "size" in rec) if task.name == "grounding" else "answer" in rec
    sqa = json.loads((out / "Instructions_Original/ScienceQA/test.json").read_text())
    assert any("image" not in rec for rec in sqa)  # text-only problems carry no image key
    for name in ("TextVQA/TextVQA_0.5.1_val.json", "GQA/testdev_balanced_questions.json",
                 "ScienceQA/problems.json", "ScienceQA/pid_splits.json"):
        assert (out / "cl_dataset" / name).is_file()


def test_round_trip_through_the_coin_reader(exported):
    spec, out = exported
    real = DataSpec(data_root=str(out))
    for task in tasks.suite("coin"):
        for split in ("train", "test"):
            mine, back = list(task.load(split, spec)), list(task.load(split, real))
            assert back and len(mine) == len(back)
            for a, b in zip(mine, back):
                assert (a.question_id, a.prompt, a.answer) == (b.question_id, b.prompt, b.answer)
                pa, pb = _pixels(a.image), _pixels(b.image)
                assert (pa is None and pb is None) or np.array_equal(pa, pb)
                if split == "test":  # the reader rebuilds scorer refs from the test file and side files
                    for key, value in a.refs.items():
                        if key == "types":  # the reader keeps the two types the scorer breaks down by
                            assert b.refs[key] == {k: value[k] for k in ("structural", "semantic")}
                        else:
                            assert b.refs[key] == value, (task.name, key)


def test_official_scorers_read_the_exported_files(exported):
    """Scoring the true answers against what the reader and the side files give back: 100% everywhere."""
    _, out = exported
    real = DataSpec(data_root=str(out))
    for task in tasks.suite("coin"):
        test = task.load("test", real)
        assert task.score([r.answer for r in test], test).accuracy == 100.0, task.name
    # What `bench score` does: the CoIN test file plus the side file, as the official scripts read them.
    for name, side in (("scienceqa", "ScienceQA/problems.json"), ("textvqa", "TextVQA/TextVQA_0.5.1_val.json"),
                       ("gqa", "GQA/testdev_balanced_questions.json")):
        task = tasks.get(name)
        refs = coin.read_annotations(task, out / "Instructions_Original" / task.coin_dir / task.test_file,
                                     [out / "cl_dataset" / side])
        mine = task.load("test", real)
        assert [(r["question_id"], r["answer"]) for r in refs] == [(r.question_id, r.answer) for r in mine]
        assert task.score([r.answer for r in mine], refs).accuracy == 100.0, name
    gqa = json.loads((out / "cl_dataset/GQA/testdev_balanced_questions.json").read_text())
    for q in gqa.values():  # what eval_gqa.py reads
        assert q["isBalanced"] and q["groups"]["global"] and q["semantic"] and q["question"]
        assert {"structural", "semantic", "detailed"} <= set(q["types"])


SIDE_FILES = {"scienceqa": ["ScienceQA/problems.json", "ScienceQA/pid_splits.json"],
              "textvqa": ["TextVQA/TextVQA_0.5.1_val.json"], "gqa": ["GQA/testdev_balanced_questions.json"]}


def _varied(records) -> list[str]:
    """Right, wrong, re-cased, punctuated and empty answers in turn, so every rule is exercised."""
    out = []
    for i, r in enumerate(records):
        other = records[(i + 1) % len(records)].answer
        out.append([r.answer, other, r.answer.upper(), r.answer + ".", "", " " + r.answer][i % 6])
    return out


def test_full_coverage_official_script_equals_the_harness_score(exported, tmp_path):
    """One prediction per test record, in record order (what the harness evaluates): the official
    scripts' file-level rules and the harness's per-record scorer give the same float, and clean mode
    through ``bench score`` equals the per-record clean scorer."""
    from tasks import official, score_cli, side_files

    _, out = exported
    real = DataSpec(data_root=str(out))
    for task in tasks.suite("coin"):
        test = task.load("test", real)
        preds = _varied(list(test))
        merge = tmp_path / f"{task.name}.jsonl"
        merge.write_text("".join(json.dumps({"question_id": r.question_id, "prompt": r.prompt, "text": p}) + "\n"
                                 for r, p in zip(test, preds)))
        ann = out / "Instructions_Original" / task.coin_dir / task.test_file
        side = [out / "cl_dataset" / f for f in SIDE_FILES.get(task.name, [])]
        inputs = official.Inputs(task.name, merge, ann, side_files.resolve(task.name, side))
        harness = task.score(preds, test)
        assert 0 < harness.accuracy < 100, task.name
        assert official.score_files(inputs).accuracy == harness.accuracy, task.name
        clean = score_cli.run(task.name, str(merge), str(ann), [str(p) for p in side], "clean")
        assert clean["accuracy"] == task.score(preds, test, mode="clean").accuracy, task.name


def test_cli(tmp_path):
    out = tmp_path / "o"
    assert main(["--suite", "coin-mini", "--out", str(out), "--tasks", "imagenet", "--mini-train", "3",
                 "--mini-test", "2", "--data-seed", "5", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(json.loads((out / "Instructions_Original/ImageNet/test.json").read_text())) == 2
    assert json.loads((out / "coin-mini-export.json").read_text())["data_seed"] == 5
