"""Each task is declared once, in the registry (tasks/__init__.py): its scorer, official script, side files
with their enricher and coin-mini generator. The lookups by name are views of those declarations."""
from __future__ import annotations

import pytest

import tasks
from tasks import coin, declared, official, scoring, side_files, synthetic
from tasks.base import Task
from tasks.types import SideFile, TaskError, TaskInfo


def test_every_task_declares_its_pieces():
    for task in tasks.suite("coin"):
        assert task.scorer is getattr(scoring, f"score_{task.name}"), task.name
        assert task.script is getattr(official, task.name).score, task.name
        assert task.generator is synthetic.GENERATORS[task.name], task.name
        assert bool(task.side_files) == (task.enricher is not None), task.name


def test_the_name_tables_are_views_of_the_declarations():
    names = tasks.names()
    assert list(scoring.SCORERS) == names and list(official.SCRIPTS) == names
    assert all(scoring.SCORERS[n] is tasks.get(n).scorer and official.SCRIPTS[n] is tasks.get(n).script for n in names)
    assert dict(side_files.ROLES) == {"scienceqa": ("problems", "splits"), "textvqa": ("answers",), "gqa": ("questions",)}
    assert dict(side_files.FILE_NAMES) == {
        "problems": "ScienceQA/problems.json", "splits": "ScienceQA/pid_splits.json",
        "answers": "TextVQA/TextVQA_0.5.1_val.json", "questions": "GQA/testdev_balanced_questions.json"}
    assert tasks.get("textvqa").enricher is coin.textvqa_enricher
    assert tasks.get("gqa").enricher is coin.gqa_enricher
    assert tasks.get("scienceqa").enricher is coin.scienceqa_enricher
    assert "imagenet" not in side_files.ROLES and "nope" not in scoring.SCORERS
    with pytest.raises(KeyError):
        scoring.SCORERS["nope"]


def test_a_new_declaration_is_all_it_takes():
    before = declared.tasks()
    extra = TaskInfo("toy", "Toy", "test.json", "Say it.", scorer=scoring.score_ocrvqa, script=official.ocrvqa.score,
                     side_files=(SideFile("toys", "Toy/toys.json"),), enricher=coin.gqa_enricher)
    try:
        declared.register([*before, extra])
        assert scoring.SCORERS["toy"] is scoring.score_ocrvqa and official.SCRIPTS["toy"] is official.ocrvqa.score
        assert side_files.ROLES["toy"] == ("toys",) and side_files.FILE_NAMES["toys"] == "Toy/toys.json"
        assert scoring.score("toy", ["a"], [{"question_id": "1", "answer": "A"}]).accuracy == 100.0
    finally:
        declared.register(before)
    assert "toy" not in scoring.SCORERS and declared.tasks() == before
    with pytest.raises(ValueError, match="declared twice"):
        declared.register([before[0], before[0]])
    assert declared.tasks() == before


def test_declared_pieces_take_no_part_in_equality_or_repr():
    task = tasks.get("gqa")
    bare = Task(task.name, task.coin_dir, task.test_file, task.instruction)  # nothing declared
    assert task == bare and hash(task) == hash(bare)
    assert repr(task) == ("Task(name='gqa', coin_dir='GQA', test_file='test.json', "
                          "instruction='Answer the question using a single word or phrase.')")
    with pytest.raises(TaskError, match="declared together"):
        TaskInfo("toy", "Toy", "test.json", "Say it.", side_files=(SideFile("toys", "Toy/toys.json"),))
