"""coin-mini generators: determinism, disjoint splits, prompt format, refs, answer spaces, caching, chance."""
from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

import tasks
from tasks.base import DataSpec
from tasks.synthetic import GENERATORS, draw, vocab
from tasks.synthetic.captions import (CAPITALISE_INSTRUCTION, ECHO_INSTRUCTION, OPTION_INSTRUCTION, _capitalise, _focused,
                                      pretrain_records)
from tasks.synthetic.layout import cell_box
from tasks.synthetic.layout import box_string

NAMES = tasks.names()
# The designed answer space of each task (see each generator's docstring).
ANSWER_SPACE = {"scienceqa": 4, "textvqa": 9, "imagenet": 32, "gqa": 20, "vizwiz": 41, "grounding": 9,
                "vqav2": 14, "ocrvqa": 44}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> DataSpec:
    """A small spec whose renders are shared by the tests of this module."""
    return DataSpec(mini_train=240, mini_test=80, cache_dir=str(tmp_path_factory.mktemp("coin-mini")))


def _pixels(record) -> np.ndarray | None:
    return None if record.image is None else np.asarray(record.image)


def _same(a, b) -> bool:
    pa, pb = _pixels(a), _pixels(b)
    pixels_equal = (pa is None and pb is None) or (pa is not None and pb is not None and np.array_equal(pa, pb))
    return (a.question_id, a.prompt, a.answer, a.refs) == (b.question_id, b.prompt, b.answer, b.refs) and pixels_equal


def test_same_seed_same_records_and_pixels_different_seed_differs(tmp_path):
    """Rendered twice into separate caches: identical; another data seed: different."""
    for name in NAMES:
        task = tasks.get(name)
        one = task.load("train", DataSpec(mini_train=16, cache_dir=str(tmp_path / "a")))
        two = task.load("train", DataSpec(mini_train=16, cache_dir=str(tmp_path / "b")))
        other = task.load("train", DataSpec(mini_train=16, data_seed=1, cache_dir=str(tmp_path / "a")))
        assert all(_same(x, y) for x, y in zip(one, two)), name
        assert [r.prompt + r.answer for r in one] != [r.prompt + r.answer for r in other], name


def test_smaller_split_is_a_prefix(small, tmp_path):
    task = tasks.get("vqav2")
    short = task.load("train", DataSpec(mini_train=10, cache_dir=str(tmp_path)))
    assert all(_same(a, b) for a, b in zip(short, task.load("train", small)[:10]))


def test_train_and_test_are_disjoint(small):
    for name in NAMES:
        task = tasks.get(name)
        train, test = task.load("train", small), task.load("test", small)
        assert not {r.question_id for r in train} & {r.question_id for r in test}
        seen = {(r.prompt, r.answer, None if r.image is None else r.image.tobytes()) for r in train}
        assert not any((r.prompt, r.answer, None if r.image is None else r.image.tobytes()) in seen for r in test), name


def test_records_have_prompt_format_ids_and_images(small):
    for name in NAMES:
        task = tasks.get(name)
        for split in ("train", "test"):
            recs = list(task.load(split, small))
            assert len({r.question_id for r in recs}) == len(recs)
            for r in recs:
                assert r.answer and "<image>" not in r.prompt
                if name == "grounding":  # one line: instruction + " " + expression (as CoIN)
                    assert "\n" not in r.prompt and r.prompt.startswith(task.instruction + " the ")
                else:
                    assert r.prompt.endswith("\n" + task.instruction)
                    assert r.instruction == task.instruction.rsplit("\n", 1)[-1]
                assert r.image is None or (r.image.size == (64, 64) and r.image.mode == "RGB")


def test_scienceqa_refs_and_text_only_records(small):
    recs = list(tasks.get("scienceqa").load("train", small))
    text_only = [r for r in recs if r.image is None]
    assert 0.1 < len(text_only) / len(recs) < 0.4
    lists: dict[str, set[tuple[str, ...]]] = {}
    for r in recs:
        options = [line for line in r.question.split("\n") if re.match(r"^[A-E]\. ", line)]
        assert r.refs["num_options"] == len(options) and 2 <= len(options) <= 5
        assert r.answer in "ABCDE"[:len(options)]
        assert r.refs["has_image"] is (r.image is not None)
        lists.setdefault(" ".join(r.question.split()[:3]), set()).add(tuple(o[3:] for o in options))
    # a template's option list is fixed (the letter follows from the content), e.g. every "...is it?"
    assert all(len(v) == 1 for v in lists.values()), lists


def test_scienceqa_text_only_facts_appear_in_both_splits(small):
    """Content-hashed splitting must not put a whole fact in the test split only."""
    def facts(split):  # within a template the letter names the fact
        return {("shape" if "Which shape" in r.question else "mix", r.answer)
                for r in tasks.get("scienceqa").load(split, small) if r.image is None}
    assert facts("test") <= facts("train")


def test_seven_segment_digits_differ_in_lit_bars():
    """Every pair of numerals differs in at least one bar, and each bar is several pixels thick at 64 px."""
    from tasks.synthetic.draw import DIGIT_BAR, SEGMENTS, segment_boxes
    from tasks.synthetic.textvqa import FONT_TWO

    patterns = {n: frozenset(segment_boxes(n, (0.5, 0.5), 0.5)) for n in "123456789"}
    assert len(set(patterns.values())) == 9
    assert all(len(segment_boxes(n, (0.5, 0.5), 0.5)) == len(SEGMENTS[n]) for n in patterns)
    assert DIGIT_BAR * FONT_TWO * 64 >= 4


def test_textvqa_ten_answers_credit_the_word(small):
    test = tasks.get("textvqa").load("test", small)
    answers = [r.refs["answers"] for r in test]
    assert all(len(a) == 10 and all(isinstance(x, str) and x for x in a) for a in answers)
    assert any(len(set(a)) > 1 for a in answers)  # realistic variation, not ten copies
    assert tasks.get("textvqa").score([r.answer for r in test], test).accuracy == 100.0


def test_grounding_every_box_scores_under_the_official_parser():
    """The official parser drops the prediction's last character; all 18 boxes must survive it."""
    from tasks import scoring

    boxes = [box_string(cell_box(pos, size)) for pos in range(9) for size in ("small", "large")]
    assert len(set(boxes)) == 18 and all(re.fullmatch(r"\[(\d\.\d\d, ){3}\d\.\d\d\]", b) for b in boxes)
    refs = [{"question_id": str(i), "answer": b, "size": [64, 64]} for i, b in enumerate(boxes)]
    assert scoring.score("grounding", boxes, refs).accuracy == 100.0
    # ... and a neighbouring box (other cell, or other size in the same cell) is never accepted.
    shifted = boxes[2:] + boxes[:2]
    assert scoring.score("grounding", shifted, refs).accuracy == 0.0
    swapped = [boxes[i ^ 1] for i in range(18)]
    assert scoring.score("grounding", swapped, refs).accuracy == 0.0


def test_grounding_refs(small):
    for r in tasks.get("grounding").load("test", small):
        assert r.refs["size"] == [64, 64] and re.fullmatch(r"\[(\d\.\d\d, ){3}\d\.\d\d\]", r.answer)


def test_answer_spaces_and_balance():
    """Drawn straight from the generators (no rendering): the designed answer-space sizes, and no
    answer more frequent than a third of the records."""
    for name, generate in GENERATORS.items():
        rng = random.Random(name)
        counts = Counter(generate(rng, 64).answer for _ in range(3000))
        assert len(counts) == ANSWER_SPACE[name], (name, len(counts))
        assert counts.most_common(1)[0][1] / 3000 < 1 / 3, (name, counts.most_common(3))


def test_vizwiz_unanswerable_share():
    rng = random.Random(0)
    answers = [GENERATORS["vizwiz"](rng, 64).answer for _ in range(2000)]
    assert 0.15 <= answers.count("unanswerable") / 2000 <= 0.25


def test_majority_baseline_is_far_below_50(small):
    from tasks.chance import majority_baseline

    table = majority_baseline(small)
    assert set(table) == set(NAMES)
    assert all(acc < 35.0 for acc in table.values()), table


def test_second_load_does_not_render(tmp_path):
    spec = DataSpec(mini_train=12, mini_test=6, cache_dir=str(tmp_path))
    task = tasks.get("ocrvqa")
    before = draw.render_count
    first = task.load("train", spec)
    rendered = draw.render_count - before
    assert rendered >= 12  # (a few more: candidates whose content hashes into the test split)
    again = task.load("train", spec)
    limited = task.load("train", DataSpec(mini_train=12, limit_train=5, cache_dir=str(tmp_path)))
    assert draw.render_count - before == rendered  # cached: neither load rendered anything
    assert [r.question_id for r in again] == [r.question_id for r in first]
    ids = [r.question_id for r in limited]
    assert len(ids) == 5 and ids == sorted(ids) and set(ids) < {r.question_id for r in first}
    assert ids == [r.question_id for r in task.load("train", DataSpec(mini_train=12, limit_train=5, cache_dir=str(tmp_path)))]
    assert limited.source == {"kind": "coin-mini", "data_seed": 0, "generator_version": limited.source["generator_version"],
                              "code_digest": limited.source["code_digest"],
                              "n": 5, "generated": 12, "image_size": 64}


def test_image_size_is_a_knob(tmp_path):
    rec = tasks.get("textvqa").load("test", DataSpec(mini_test=2, image_size=96, cache_dir=str(tmp_path)))[0]
    assert rec.image.size == (96, 96)


def test_pretrain_captions(tmp_path):
    split = pretrain_records(60, seed=0, image_size=64, cache_dir=str(tmp_path))
    assert (split.task, split.split, len(split)) == ("pretrain", "train", 60)
    prompts, answers = split.texts()
    # captions are single-line prompts; the text-only records (copying, capitalising, option lookup) end
    # with their instruction line
    echo = [i for i, p in enumerate(prompts) if p.endswith("\n" + ECHO_INSTRUCTION)]
    case = [i for i, p in enumerate(prompts) if p.endswith("\n" + CAPITALISE_INSTRUCTION)]
    lookup = [i for i, p in enumerate(prompts) if p.endswith("\n" + OPTION_INSTRUCTION)]
    assert sorted(echo + case + lookup) == [i for i, p in enumerate(prompts) if "\n" in p]
    assert all(split[i].image is None for i in echo + case + lookup)
    assert all(prompts[i].split("\n")[0] == answers[i] for i in echo)
    for i in lookup:  # the answer letter labels the option the question names
        word = prompts[i].split("\n")[0].removeprefix("Which option says ").removesuffix("?")
        assert f"{answers[i]}. {word}" in prompts[i].split("\n")
    assert 0 < len(echo) < 20 and 0 < len(lookup) < 20
    text = " ".join(answers)
    for word in ("red", "circle", "small", "large", "top left", 'the word "'):
        assert word in text
    before = draw.render_count
    assert pretrain_records(60, seed=0, image_size=64, cache_dir=str(tmp_path)).texts() == (prompts, answers)
    assert draw.render_count == before


def test_capitalise_records_change_only_the_first_letter():
    rng = random.Random(0)
    firsts = set()
    for _ in range(200):
        sample = _capitalise(rng)
        text, instruction = sample.question.split("\n")
        assert instruction == CAPITALISE_INSTRUCTION and sample.scene is None
        assert text == text.lower() and sample.answer == text[0].upper() + text[1:] != text
        firsts.add(sample.answer.split()[0])
    assert {c.capitalize() for c in vocab.COLOURS} <= firsts  # every colour, as ImageNet's labels start


def test_grounded_captions_name_exact_cell_boxes_and_no_grounding_prompt():
    """Stage 0's grounded captions write boxes the scene really has, and never use the task's prompt."""
    from tasks.synthetic.captions import _grounded
    from tasks.synthetic.layout import HALF

    cells = {box_string(cell_box(pos, size)) for pos in range(9) for size in HALF}
    rng = random.Random(0)
    for _ in range(200):
        caption, scene = _grounded(rng)
        boxes = re.findall(r"\[[^\]]+\]", caption)
        assert 1 <= len(boxes) == len(scene.items) <= 2 and set(boxes) <= cells
        assert [box_string(s.box) for s in scene.items] == boxes  # each box is its object's drawn extent
        assert "bounding box" not in caption


def test_focused_captions_describe_the_part_the_instruction_names_and_ask_no_task_question():
    """Stage 0's focused captions: the answer is the caption of exactly the named object, word, number or cover
    element (it is drawn where the instruction says), and no task asks its questions that way."""
    rng = random.Random(0)
    kinds = Counter()
    for _ in range(300):
        sample = _focused(rng)
        part = sample.question.removeprefix("Describe only ").removesuffix(".")
        items = sample.scene.items
        words = [i for i in items if isinstance(i, draw.Text)]
        if part in ("the upper word", "the lower word", "the upper number", "the lower number"):
            noun = part.split()[-1]
            lines = [i for i in items if isinstance(i, draw.Digits if noun == "number" else draw.Text)]
            upper, lower = sorted(lines, key=lambda t: t.center[1])
            want = upper if "upper" in part else lower
            text = want.word if noun == "number" else f'"{want.word}"'
            assert len(lines) == len(items) == 2 and sample.answer.startswith(f"the {noun} {text} in "), sample
            kinds[noun] += 1
        elif part.startswith("the text at the"):
            top, bottom = sorted(words, key=lambda t: t.center[1])
            want = top.word if "top" in part else bottom.word
            label = "title" if "top" in part else "author"
            assert sample.answer == f'the {label} "{want}"', sample
            kinds["cover"] += 1
        elif part == "the cover's design":
            assert sample.answer.endswith(tuple(f" {i.kind}" for i in items if isinstance(i, draw.Shape)))
            kinds["cover"] += 1
        else:  # an object, by its place or its (unique) shape
            shapes = [i for i in items if isinstance(i, draw.Shape)]
            assert len({i.kind for i in shapes}) == len(shapes)
            named = [i for i in shapes if i.kind in sample.answer.split()]
            assert len(named) == 1, sample
            kinds["object"] += 1
    assert min(kinds.values()) > 15 and len(kinds) == 4
    for task, generate in GENERATORS.items():
        questions = {generate(random.Random(i), 64).question for i in range(50)}
        assert not any(q.startswith("Describe only") for q in questions), task
