"""Write coin-mini in the real CoIN file layout, so the real reader and scorers run on real-format files.

``python -m bench export --suite coin-mini --out DIR [--data-seed N] [--mini-train N] [--mini-test N]``
writes (the layout of CoIN's released data)::

    DIR/Instructions_Original/<Task>/train.json        LLaVA conversations
    DIR/Instructions_Original/<Task>/test.json|val.json {"question_id", "image"?, "text", "answer"}
                                                         (grounding: "answer_bbox" + "size")
    DIR/cl_dataset/<Task>/images/<split>/<question_id>.png
    DIR/cl_dataset/TextVQA/TextVQA_0.5.1_val.json       the ten answers per question
    DIR/cl_dataset/GQA/testdev_balanced_questions.json  gold answers, isBalanced, types
    DIR/cl_dataset/ScienceQA/problems.json, pid_splits.json
    DIR/coin-mini-export.json                           what was exported (seed, sizes, generator version)

Images are copied as the cached PNG bytes (no re-encoding), so an exported image is pixel-identical
to the record's image. Text-only ScienceQA records have no "image" key and no "<image>" line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from datasets import Image

import tasks
from tasks.base import Task
from tasks.types import DataSpec, TaskError, TaskSplit
from tasks.synthetic import GENERATOR_VERSION

VARIANT = "Original"  # coin-mini prompts use CoIN's Original instruction suffixes
IMAGE_ROOT = "cl_dataset"
LETTERS = "ABCDE"
_CHOICE = re.compile(r"^([A-E])\. (.*)$")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _rows(split: TaskSplit) -> list[dict[str, Any]]:
    """The split's rows with images as raw PNG bytes (``decode=False``: nothing is decoded)."""
    ds = split.dataset.cast_column("image", Image(decode=False))
    return [dict(row, refs=json.loads(row["refs"])) for row in ds]


def _write_images(out: Path, task: Task, split_name: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """PNG files under cl_dataset/; returns question_id -> path relative to cl_dataset/."""
    paths = {}
    for row in rows:
        if row["image"] is None:
            continue
        rel = f"{task.coin_dir}/images/{split_name}/{row['question_id']}.png"
        target = out / IMAGE_ROOT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(row["image"]["bytes"])
        paths[row["question_id"]] = rel
    return paths


def _train_json(rows: list[dict[str, Any]], images: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        qid = row["question_id"]
        rec: dict[str, Any] = {"id": qid}
        human = row["prompt"]
        if qid in images:
            rec["image"] = images[qid]
            human = "<image>\n" + human
        rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": row["answer"]}]
        out.append(rec)
    return out


def _test_json(task: Task, rows: list[dict[str, Any]], images: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        qid = row["question_id"]
        rec: dict[str, Any] = {"question_id": qid}
        if qid in images:
            rec["image"] = images[qid]
        rec["text"] = row["prompt"]
        if task.name == "grounding":
            rec["answer_bbox"], rec["size"] = row["answer"], row["refs"]["size"]
        else:
            rec["answer"] = row["answer"]
        out.append(rec)
    return out


def _question(prompt: str) -> str:
    """The question line (the prompt without its instruction suffix and option lines)."""
    return prompt.split("\n", 1)[0]


def _textvqa_side(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    data = [{
        "question": _question(r["prompt"]), "image_id": r["question_id"], "image_classes": [],
        "flickr_original_url": "", "flickr_300k_url": "", "image_width": size, "image_height": size,
        "answers": r["refs"]["answers"], "question_tokens": _question(r["prompt"]).lower().rstrip("?").split(),
        "question_id": r["question_id"], "set_name": "val",
    } for r in rows]
    return {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}


def _gqa_side(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """GQA questions format. eval_gqa.py reads answer, isBalanced, types, question (word count),
    semantic (reasoning steps) and groups.global (distribution metric; never None here, or the
    script's chi-square divides by zero)."""
    out = {}
    for r in rows:
        types = r["refs"]["types"]
        question = _question(r["prompt"])
        semantic = [{"operation": "select", "argument": "scene", "dependencies": []},
                    {"operation": types["structural"], "argument": types["semantic"], "dependencies": [0]}]
        out[r["question_id"]] = {
            "question": question, "answer": r["answer"], "fullAnswer": r["answer"], "imageId": r["question_id"],
            "isBalanced": True, "types": types, "groups": {"global": types.get("detailed"), "local": None},
            "semantic": semantic, "semanticStr": "", "entailed": [], "equivalent": [r["question_id"]],
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        }
    return out


def _scienceqa_problem(row: dict[str, Any], split_name: str, image: str | None) -> dict[str, Any]:
    lines = row["prompt"].split("\n")[:-1]  # drop the instruction suffix
    choices = [m.group(2) for m in map(_CHOICE.match, lines[1:]) if m]
    if len(choices) != row["refs"]["num_options"] or row["answer"] not in LETTERS[:len(choices)]:
        raise TaskError(f"scienceqa record {row['question_id']}: prompt options do not match refs/answer")
    return {
        "question": lines[0], "choices": choices, "answer": LETTERS.index(row["answer"]), "hint": "",
        "image": Path(image).name if image else None, "task": "closed choice", "grade": "grade1",
        "subject": "natural science", "topic": "coin-mini", "category": "coin-mini", "skill": "coin-mini",
        "lecture": "", "solution": "", "split": split_name,
    }


def _side_path(out: Path, task: Task, role: str) -> Path:
    """Where the task's side file of ``role`` goes: its declared path under ``cl_dataset/``."""
    return out / IMAGE_ROOT / next(f.path for f in task.side_files if f.role == role)


def export_suite(out_dir: str | Path, spec: DataSpec, task_names: list[str] | None = None) -> Path:
    """Export coin-mini (for ``spec``'s seed and sizes) to ``out_dir`` in CoIN's layout; returns the path."""
    out = Path(out_dir)
    names = task_names or list(tasks.SUITES["coin"])
    mini_spec = dataclasses.replace(spec, data_root=None)  # always the generator, never a data root
    problems: dict[str, Any] = {}
    pid_splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in names:
        task = tasks.get(name)
        task_dir = out / f"Instructions_{VARIANT}" / task.coin_dir
        for split_name in ("train", "test"):
            rows = _rows(task.load(split_name, mini_spec))
            images = _write_images(out, task, split_name, rows)
            if split_name == "train":
                _write_json(task_dir / "train.json", _train_json(rows, images))
            else:
                _write_json(task_dir / task.test_file, _test_json(task, rows, images))
            if name == "scienceqa":
                for row in rows:
                    problems[row["question_id"]] = _scienceqa_problem(row, split_name, images.get(row["question_id"]))
                    pid_splits[split_name].append(row["question_id"])
            elif name == "textvqa" and split_name == "test":
                _write_json(_side_path(out, task, "answers"), _textvqa_side(rows, spec.image_size))
            elif name == "gqa" and split_name == "test":
                _write_json(_side_path(out, task, "questions"), _gqa_side(rows))
    if "scienceqa" in names:
        pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
        _write_json(_side_path(out, tasks.get("scienceqa"), "problems"), problems)
        _write_json(_side_path(out, tasks.get("scienceqa"), "splits"), pid_splits)
    _write_json(out / "coin-mini-export.json", {
        "kind": "coin-mini", "generator_version": GENERATOR_VERSION, "data_seed": spec.data_seed,
        "mini_train": spec.mini_train, "mini_test": spec.mini_test, "limit_train": spec.limit_train,
        "limit_test": spec.limit_test, "image_size": spec.image_size, "tasks": names, "instructions": VARIANT})
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``export --suite coin-mini --out DIR [--data-seed N] [--mini-train N] [--mini-test N]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:  # tolerate being handed the sub-command itself
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m bench export", description="write coin-mini in the real CoIN file layout")
    p.add_argument("--suite", default="coin-mini", choices=["coin-mini"], help="what to export (only coin-mini)")
    p.add_argument("--out", required=True, help="output folder (the CoIN data root to pass as --data-root)")
    p.add_argument("--tasks", help="comma-separated task names (default: all eight, in CoIN order)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--mini-train", type=int, default=DataSpec.mini_train)
    p.add_argument("--mini-test", type=int, default=DataSpec.mini_test)
    p.add_argument("--image-size", type=int, default=DataSpec.image_size)
    p.add_argument("--cache-dir", help="coin-mini render cache (default ~/.cache/continual-moe-bench/coin-mini)")
    a = p.parse_args(argv)
    names = [t.name for t in tasks.resolve(a.tasks)] if a.tasks else None
    spec = DataSpec(data_seed=a.data_seed, mini_train=a.mini_train, mini_test=a.mini_test, image_size=a.image_size,
                    cache_dir=a.cache_dir)
    out = export_suite(a.out, spec, names)
    print(f"wrote coin-mini (seed {a.data_seed}, {a.mini_train} train / {a.mini_test} test per task) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
