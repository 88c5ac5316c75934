"""The data types every part of ``tasks`` shares: records, lazily decoded splits, score results, the
data source and the description of a task. This module imports nothing else from ``tasks``, so the
readers, generators and scorers can all import it without a cycle; :mod:`tasks.base` adds loading and
scoring to :class:`TaskInfo`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

from PIL import Image

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Record:
    """One sample, model-independent.

    ``prompt`` is ``question + "\\n" + instruction``: the instruction suffix is always the last line
    (CoIN's Original instructions). It never contains ``<image>``; the backbone adds its own image
    placeholder. ``refs`` carries whatever the task's scorer needs beyond ``answer`` (TextVQA's ten
    reference answers, grounding's image size, ScienceQA's number of options, ...).
    """

    question_id: str
    prompt: str
    answer: str
    image: Image.Image | None = None
    refs: dict[str, Any] = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        return self.prompt.rsplit("\n", 1)[-1]

    @property
    def question(self) -> str:
        return self.prompt.rsplit("\n", 1)[0] if "\n" in self.prompt else ""


class TaskSplit(Sequence[Record]):
    """A lazily decoded split. ``dataset`` has the columns
    ``question_id: string, prompt: string, answer: string, image: Image (nullable), refs: string (JSON)``.
    """

    COLUMNS: ClassVar[tuple[str, ...]] = ("question_id", "prompt", "answer", "image", "refs")

    def __init__(self, task: str, split: str, dataset, source: dict[str, Any]):
        self.task = task
        self.split = split
        self.dataset = dataset
        self.source = source  # provenance: {"kind": "coin"|"coin-mini", ...} for the run record

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.dataset[int(index)]
        return _row_to_record(row)

    def __iter__(self) -> Iterator[Record]:
        for row in self.dataset:
            yield _row_to_record(row)

    def texts(self) -> tuple[list[str], list[str]]:
        """Prompts and answers without decoding any image (fast path for tokenizers and locators)."""
        cols = self.dataset.select_columns(["prompt", "answer"])
        return list(cols["prompt"]), list(cols["answer"])

    def references(self) -> list[dict[str, Any]]:
        """Scorer references, in record order: ``{"question_id", "answer", **refs}``."""
        cols = self.dataset.select_columns(["question_id", "answer", "refs"])
        return [
            {"question_id": q, "answer": a, **json.loads(r)}
            for q, a, r in zip(cols["question_id"], cols["answer"], cols["refs"])
        ]


def _row_to_record(row: dict[str, Any]) -> Record:
    image = row.get("image")
    if image is not None and image.mode != "RGB":
        image = image.convert("RGB")
    return Record(
        question_id=row["question_id"],
        prompt=row["prompt"],
        answer=row["answer"],
        image=image,
        refs=json.loads(row["refs"]) if row.get("refs") else {},
    )


@dataclass(frozen=True)
class ScoreResult:
    """What a scorer returns. ``accuracy`` is a percentage; ``per_sample`` in [0, 1] aligned with the
    references (soft for VQA accuracy); ``extras`` holds breakdowns (e.g. GQA per type). ``counted``
    marks the ``per_sample`` entries the denominator ``n`` counts (None = all of them; GQA counts only
    balanced questions), so ``accuracy == 100 * mean(per_sample[i] for i counted)``."""

    task: str
    mode: str
    n: int
    accuracy: float
    per_sample: list[float]
    extras: dict[str, Any] = field(default_factory=dict)
    counted: list[bool] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "mode": self.mode, "n": self.n, "accuracy": self.accuracy, **self.extras}


class TaskError(ValueError):
    """Bad task input (unknown name, malformed annotation, missing file). The message is complete
    enough for a user: file, record index and field where they apply. The CLI exits 2 on it."""


@dataclass(frozen=True)
class DataSpec:
    """Where records come from. ``data_root=None`` selects the embedded coin-mini generator."""

    data_root: str | None = None
    instructions: str = "Original"  # Original | Diverse | 10Type (real CoIN files only)
    limit_train: int | None = None  # deterministic subsample (seeded by data_seed)
    limit_test: int | None = None
    data_seed: int = 0
    mini_train: int = 2000  # coin-mini sizes per task
    mini_test: int = 200
    image_size: int = 64
    cache_dir: str | None = None  # coin-mini Arrow cache; default ~/.cache/continual-moe-bench/coin-mini
    # validation protocol (tasks.validation): "train" = the training split minus a held-out part,
    # "test" = that held-out part; the task's test split is never loaded
    validation: bool = False

    @property
    def source(self) -> str:
        return "coin" if self.data_root else "coin-mini"


@dataclass(frozen=True)
class TaskInfo:
    """One CoIN task: its name and where its files live in the CoIN layout.

    ``coin_dir`` is the folder under ``Instructions_<Variant>/``; ``test_file`` is ``test.json`` or
    ``val.json`` as shipped by CoIN.
    """

    name: str
    coin_dir: str
    test_file: str
    instruction: str  # the Original-variant suffix (last prompt line)
