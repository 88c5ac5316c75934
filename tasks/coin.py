"""Reader for the real CoIN files: the instruction JSONs, the images and the official side files.

Layout under ``DataSpec.data_root``::

    Instructions_<Variant>/<Task>/train.json            LLaVA conversation format
    Instructions_<Variant>/<Task>/test.json | val.json  {"question_id", "image", "text", "answer"}
                                                        grounding: "answer_bbox" + "size" instead of "answer"
    cl_dataset/<relative image paths>
    cl_dataset/TextVQA/TextVQA_0.5.1_val.json           official side files, used where present
    cl_dataset/GQA/testdev_balanced_questions.json
    cl_dataset/ScienceQA/problems.json, pid_splits.json

Every record is validated before anything is built: a missing key, a wrong type, a missing image file,
a grounding box that is not four numbers or a test ``question_id`` that repeats an earlier record's
(compared as strings, as records store them) raises :class:`TaskError` naming the file, the record
index(es) and the field, so a run never starts half-loaded and nothing is silently dropped.

Test-split refs (see :mod:`tasks.scoring` for what each scorer reads):
``grounding`` ``size``; ``scienceqa`` ``has_image`` and, with ``problems.json``, ``num_options``;
``textvqa`` ``answers`` from ``TextVQA_0.5.1_val.json``; ``gqa`` ``official_answer``, ``is_balanced``
and ``types`` from ``testdev_balanced_questions.json``. Train records carry empty refs.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets

from tasks import side_files as side_files_mod
from tasks.types import DataSpec, TaskError, TaskInfo, TaskSplit

TEST_FILES = ("test.json", "val.json")
IMAGE_DIR = "cl_dataset"
SCIENCEQA_LETTERS = ("A", "B", "C", "D", "E")
IMAGE_TOKEN = "<image>"


@dataclass
class RawRecord:
    """One validated record before it becomes a dataset row; ``image`` is the relative path."""

    question_id: str
    prompt: str
    answer: str
    image: str | None
    refs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Errors and small validators
# --------------------------------------------------------------------------------------------------

def _record_error(path: Path | str, index: int, field_name: str, problem: str) -> TaskError:
    return TaskError(f"{path}: record {index}: field '{field_name}': {problem}")


def _get(rec: dict[str, Any], key: str, kinds: tuple[type, ...], path: Path | str, index: int,
         field_name: str | None = None) -> Any:
    """``rec[key]`` checked for presence and type (bool is never accepted as an int)."""
    name = field_name or key
    if key not in rec:
        raise _record_error(path, index, name, "missing")
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise _record_error(path, index, name, f"expected {expected}, got {type(value).__name__} {value!r:.60}")
    return value


def _question_id(rec: dict[str, Any], keys: tuple[str, ...], path: Path | str, index: int) -> str:
    """The record id as a string (CoIN ids are ints or strings; the scripts match on ``str()``)."""
    for key in keys:
        if key in rec:
            return str(_get(rec, key, (str, int), path, index))
    raise _record_error(path, index, " or ".join(keys), "missing")


def _optional_image(rec: dict[str, Any], path: Path | str, index: int) -> str | None:
    """``image`` is optional (text-only ScienceQA problems have none) but must be a path when given."""
    value = rec.get("image")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _record_error(path, index, "image", f"expected a relative path string, got {value!r:.60}")
    return value


def check_box(box: str, path: Path | str, index: int, field_name: str) -> None:
    """A grounding box must be "[x1, y1, x2, y2]": four numbers once brackets are removed, as the
    ground-truth parser of ``eval_grounding.py`` reads it."""
    try:
        values = [float(p) for p in box.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise _record_error(path, index, field_name, f"expected a box of four numbers '[x1, y1, x2, y2]', got {box!r:.80}")


def _check_size(value: Any, path: Path | str, index: int) -> list[float]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise _record_error(path, index, "size", f"expected [width, height] with positive numbers, got {value!r:.60}")
    return value


def strip_image_token(text: str) -> str:
    """The prompt never contains ``<image>``: drop the LLaVA token and the newline that joins it."""
    if IMAGE_TOKEN not in text:
        return text
    return text.replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "").replace(IMAGE_TOKEN, "")


# --------------------------------------------------------------------------------------------------
# Record parsers
# --------------------------------------------------------------------------------------------------

def parse_train_record(task: TaskInfo, rec: Any, index: int, path: Path | str) -> RawRecord:
    """LLaVA format: ``{"id", "image"?, "conversations": [{"from": "human"}, {"from": "gpt"}]}``;
    prompt = the human turn without ``<image>``, answer = the gpt turn. Multi-turn records are refused
    (keeping only the first exchange would silently drop data)."""
    if not isinstance(rec, dict):
        raise _record_error(path, index, "<record>", f"expected a JSON object, got {type(rec).__name__}")
    qid = _question_id(rec, ("id", "question_id"), path, index)
    conv = _get(rec, "conversations", (list,), path, index)
    if len(conv) != 2:
        raise _record_error(path, index, "conversations", f"expected one human and one gpt turn, got {len(conv)} turns")
    values = []
    for turn_index, speaker in enumerate(("human", "gpt")):
        turn = conv[turn_index]
        name = f"conversations[{turn_index}]"
        if not isinstance(turn, dict):
            raise _record_error(path, index, name, f"expected an object, got {type(turn).__name__}")
        who = _get(turn, "from", (str,), path, index, f"{name}.from")
        if who != speaker:
            raise _record_error(path, index, f"{name}.from", f"expected {speaker!r}, got {who!r}")
        values.append(_get(turn, "value", (str,), path, index, f"{name}.value"))
    prompt, answer = strip_image_token(values[0]), values[1]
    if task.name == "grounding":
        check_box(answer, path, index, "conversations[1].value")
    return RawRecord(qid, prompt, answer, _optional_image(rec, path, index))


def parse_test_record(task: TaskInfo, rec: Any, index: int, path: Path | str) -> RawRecord:
    """Test/val format: ``{"question_id", "image"?, "text", "answer"}``; grounding has ``answer_bbox``
    (the box string) and ``size`` instead of ``answer``; ScienceQA's answer is an option letter."""
    if not isinstance(rec, dict):
        raise _record_error(path, index, "<record>", f"expected a JSON object, got {type(rec).__name__}")
    qid = _question_id(rec, ("question_id",), path, index)
    prompt = strip_image_token(_get(rec, "text", (str,), path, index))
    image = _optional_image(rec, path, index)
    refs: dict[str, Any] = {}
    if task.name == "grounding":
        answer = _get(rec, "answer_bbox", (str,), path, index)
        check_box(answer, path, index, "answer_bbox")
        refs["size"] = _check_size(_get(rec, "size", (list,), path, index), path, index)
    else:
        answer = _get(rec, "answer", (str,), path, index)
    if task.name == "scienceqa":
        if answer not in SCIENCEQA_LETTERS:
            raise _record_error(path, index, "answer", f"expected an option letter A-E, got {answer!r:.40}")
        refs["has_image"] = image is not None
    return RawRecord(qid, prompt, answer, image, refs)


def parse_records(task: TaskInfo, data: Any, path: Path | str, split: str) -> list[RawRecord]:
    """Validate and parse every record of a loaded CoIN JSON file."""
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    parser = parse_train_record if split == "train" else parse_test_record
    return [parser(task, rec, i, path) for i, rec in enumerate(data)]


def check_unique_ids(records: list[RawRecord], path: Path | str) -> None:
    """Test records are matched to predictions by ``question_id``: a repeated id (as the string the
    record stores, so ``5`` and ``"5"`` are the same id) would make that ambiguous."""
    first: dict[str, int] = {}
    for i, rec in enumerate(records):
        if rec.question_id in first:
            raise _record_error(path, i, "question_id", f"{rec.question_id!r} repeats record {first[rec.question_id]}; "
                                "test question ids must be unique")
        first[rec.question_id] = i


def check_image_files(records: list[RawRecord], image_root: Path, path: Path | str) -> None:
    """Every referenced image must exist under ``cl_dataset/`` (checked without decoding it)."""
    for i, rec in enumerate(records):
        if rec.image is not None and not (image_root / rec.image).is_file():
            raise _record_error(path, i, "image", f"file not found: {image_root / rec.image}")


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def load_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is a TaskError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TaskError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_file(task: TaskInfo, split: str, spec: DataSpec) -> Path:
    """``Instructions_<Variant>/<Task>/train.json``, or the task's test file (test.json or val.json,
    whichever exists, the registry's choice first). Missing -> TaskError listing what was expected."""
    root = Path(spec.data_root or ".")
    task_dir = root / f"Instructions_{spec.instructions}" / task.coin_dir
    if split == "train":
        candidates = ["train.json"]
    else:
        candidates = [task.test_file] + [n for n in TEST_FILES if n != task.test_file]
    for name in candidates:
        if (task_dir / name).is_file():
            return task_dir / name
    variants = sorted(p.name for p in root.glob("Instructions_*")) if root.is_dir() else []
    raise TaskError(
        f"CoIN {split} file for task {task.name!r} not found: expected {' or '.join(str(task_dir / n) for n in candidates)} "
        f"(layout: <data_root>/Instructions_<Variant>/<Task>/train.json and test.json or val.json, images under "
        f"<data_root>/{IMAGE_DIR}/); Instructions folders present under {root}: {', '.join(variants) or 'none'}")


# --------------------------------------------------------------------------------------------------
# Official side files: each loader returns a function that adds refs to a record. Which side files a
# task has and which loader reads them is declared with the task (``side_files`` and ``enricher``).
# --------------------------------------------------------------------------------------------------

Enricher = Callable[[RawRecord, int, Path], None]


def _side_key_error(side: Path, ann_path: Path, index: int, qid: str) -> TaskError:
    return _record_error(ann_path, index, "question_id", f"{qid!r} not found in side file {side}")


def textvqa_enricher(side: Path) -> Enricher:
    """``TextVQA_0.5.1_val.json``: ``{"data": [{"question_id", "answers": [10 strings]}]}``, matched on
    ``str(question_id)`` as ``eval_textvqa.py`` does."""
    data = load_json(side)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise TaskError(f"{side}: expected an object with a 'data' list (TextVQA 0.5.1 format)")
    table: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _record_error(side, i, "<record>", f"expected a JSON object, got {type(row).__name__}")
        qid = _question_id(row, ("question_id",), side, i)
        answers = _get(row, "answers", (list,), side, i)
        if len(answers) != 10 or not all(isinstance(a, str) for a in answers):
            raise _record_error(side, i, "answers", f"expected 10 strings, got {answers!r:.80}")
        table[qid] = answers

    def enrich(rec: RawRecord, index: int, ann_path: Path) -> None:
        if rec.question_id not in table:
            raise _side_key_error(side, ann_path, index, rec.question_id)
        rec.refs["answers"] = table[rec.question_id]
    return enrich


def gqa_enricher(side: Path) -> Enricher:
    """``testdev_balanced_questions.json``: ``{qid: {"answer", "isBalanced", "types": {...}}}``; the
    official gold answer, the balanced flag and the structural / semantic types."""
    data = load_json(side)
    if not isinstance(data, dict):
        raise TaskError(f"{side}: expected an object keyed by question id (GQA questions format)")

    def enrich(rec: RawRecord, index: int, ann_path: Path) -> None:
        question = data.get(rec.question_id)
        if question is None:
            raise _side_key_error(side, ann_path, index, rec.question_id)
        if not isinstance(question, dict) or not isinstance(question.get("answer"), str):
            raise TaskError(f"{side}: question {rec.question_id!r}: field 'answer': expected a question object "
                            f"with a string answer")
        rec.refs["official_answer"] = question["answer"]
        if "isBalanced" in question:
            rec.refs["is_balanced"] = bool(question["isBalanced"])
        types = question.get("types")
        if isinstance(types, dict):
            rec.refs["types"] = {k: types[k] for k in ("structural", "semantic") if isinstance(types.get(k), str)}
    return enrich


def _scienceqa_problems(side: Path) -> dict[str, dict[str, Any]]:
    """``problems.json`` reduced to what scoring needs: ``{pid: {"answer": letter, "num_options",
    "has_image"}}``."""
    data = load_json(side)
    if not isinstance(data, dict):
        raise TaskError(f"{side}: expected an object keyed by problem id (ScienceQA problems format)")
    problems: dict[str, dict[str, Any]] = {}
    for pid, prob in data.items():
        if not isinstance(prob, dict):
            raise TaskError(f"{side}: problem {pid!r}: expected an object")
        choices = prob.get("choices")
        answer = prob.get("answer")
        if not isinstance(choices, list) or not 1 <= len(choices) <= len(SCIENCEQA_LETTERS):
            raise TaskError(f"{side}: problem {pid!r}: field 'choices': expected a list of 1-5 choices")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskError(f"{side}: problem {pid!r}: field 'answer': expected a choice index, got {answer!r}")
        problems[str(pid)] = {"answer": SCIENCEQA_LETTERS[answer], "num_options": len(choices),
                              "has_image": bool(prob.get("image"))}
    return problems


def scienceqa_enricher(side: Path, problems: dict[str, dict[str, Any]] | None = None) -> Enricher:
    problems = _scienceqa_problems(side) if problems is None else problems

    def enrich(rec: RawRecord, index: int, ann_path: Path) -> None:
        prob = problems.get(rec.question_id)
        if prob is None:
            raise _side_key_error(side, ann_path, index, rec.question_id)
        rec.refs["num_options"] = prob["num_options"]
    return enrich


def apply_side_file(task: TaskInfo, records: list[RawRecord], side: Path, ann_path: Path) -> None:
    """Add the refs of ``side`` (one of the task's side files) to every record, with the task's enricher."""
    enrich = task.enricher(side)
    for i, rec in enumerate(records):
        enrich(rec, i, ann_path)


def scienceqa_test_references(splits_path: Path, problems_path: Path, problems: dict[str, dict[str, Any]],
                              split: str = "test") -> list[dict[str, Any]]:
    """Every problem of ``pid_splits.json[split]``, in that order, as scorer references."""
    splits = load_json(splits_path)
    pids = splits.get(split) if isinstance(splits, dict) else None
    if not isinstance(pids, list):
        raise TaskError(f"{splits_path}: expected an object with a {split!r} list of problem ids")
    refs = []
    for i, pid in enumerate(pids):
        prob = problems.get(str(pid))
        if prob is None:
            raise _record_error(splits_path, i, split, f"problem id {pid!r} not in {problems_path}")
        refs.append({"question_id": str(pid), **prob})
    return refs


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------

def subsample(n: int, limit: int | None, seed: int, task: str, split: str) -> list[int]:
    """Indices of a deterministic subsample of ``limit`` records (all when ``limit`` is None or not
    smaller than ``n``), kept in original order. The RNG is seeded by the data seed, the task and the
    split, so each task's choice is independent and reproducible."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise TaskError(f"limit for {task} {split} must be a positive integer, got {limit}")
    rng = random.Random(f"coin:{task}:{split}:{seed}")
    return sorted(rng.sample(range(n), limit))


def _build_dataset(records: list[RawRecord], image_root: Path):
    """A ``datasets.Dataset`` whose image column holds file *paths*: decoding happens on access."""
    features = datasets.Features({
        "question_id": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "image": datasets.Image(),
        "refs": datasets.Value("string"),
    })
    columns = {
        "question_id": [r.question_id for r in records],
        "prompt": [r.prompt for r in records],
        "answer": [r.answer for r in records],
        "image": [None if r.image is None else str(image_root / r.image) for r in records],
        "refs": [json.dumps(r.refs, sort_keys=True) for r in records],
    }
    return datasets.Dataset.from_dict(columns, features=features)


def load_split(task: TaskInfo, split: str, spec: DataSpec) -> TaskSplit:
    """Read, validate and (optionally) subsample one split of a real CoIN task."""
    if not spec.data_root:
        raise TaskError("the CoIN reader needs DataSpec.data_root (the folder holding Instructions_<Variant>/ and cl_dataset/)")
    path = split_file(task, split, spec)
    image_root = Path(spec.data_root) / IMAGE_DIR
    records = parse_records(task, load_json(path), path, split)
    if split == "test":
        check_unique_ids(records, path)
    check_image_files(records, image_root, path)
    side_files = []
    if split == "test" and task.side_files:
        side = image_root / task.side_files[0].path
        if side.is_file():  # used where present: the scorers fall back without them
            apply_side_file(task, records, side, path)
            side_files.append(str(side))
    limit = spec.limit_train if split == "train" else spec.limit_test
    chosen = [records[i] for i in subsample(len(records), limit, spec.data_seed, task.name, split)]
    source = {"kind": "coin", "instructions": spec.instructions, "file": str(path), "sha256": sha256_file(path),
              "n": len(chosen), "n_total": len(records), "limit": limit, "data_seed": spec.data_seed,
              "side_files": side_files}
    return TaskSplit(task.name, split, _build_dataset(chosen, image_root), source)


def read_annotations(task: TaskInfo, annotations_path: str | Path,
                     side_files: Sequence[str | Path] | str | Path | None = None) -> list[dict[str, Any]]:
    """Scorer references ``{"question_id", "answer", **refs}`` for ``bench score --mode clean``: every
    record of a CoIN test/val JSON (validated as in :func:`load_split`, ids unique; images are not
    needed to score, so their files are not checked), enriched by the official side files (see
    :mod:`tasks.side_files`). For ScienceQA with its side files the references are every problem of
    ``pid_splits.json['test']`` with its answer from ``problems.json``; each CoIN record must then be
    one of the problems."""
    path = Path(annotations_path)
    if not path.is_file():
        raise TaskError(f"annotations file not found: {path} (expected a CoIN {' or '.join(TEST_FILES)} "
                        f"from Instructions_<Variant>/{task.coin_dir}/)")
    records = parse_records(task, load_json(path), path, "test")
    check_unique_ids(records, path)
    side = side_files_mod.resolve(task.name, side_files)
    if task.name == "scienceqa" and side:
        problems = _scienceqa_problems(side["problems"])
        enrich = scienceqa_enricher(side["problems"], problems)
        for i, rec in enumerate(records):  # every CoIN record must be a known problem
            enrich(rec, i, path)
        return scienceqa_test_references(side["splits"], side["problems"], problems)
    for role_path in side.values():
        apply_side_file(task, records, role_path, path)
    return [{"question_id": r.question_id, "answer": r.answer, **r.refs} for r in records]
