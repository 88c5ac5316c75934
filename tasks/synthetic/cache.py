"""On-disk Arrow cache for rendered coin-mini splits.

A split is rendered once and saved with ``datasets.save_to_disk`` under a folder named by a hash of
everything that determines its content (generator version, task, split, size, seed, image size). Later
loads memory-map it with ``load_from_disk`` and never re-render. Images are stored as PNG bytes in a
``datasets.Image()`` column, so they are decoded only when a record is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import datasets
from datasets import Dataset, Features, Image, Value

DEFAULT_ROOT = Path("~/.cache/continual-moe-bench/coin-mini")
FEATURES = Features({
    "question_id": Value("string"),
    "prompt": Value("string"),
    "answer": Value("string"),
    "image": Image(),
    "refs": Value("string"),
})


def cache_path(name: str, key: dict[str, Any], cache_dir: str | os.PathLike | None) -> Path:
    """``<root>/<name>-<hash of key>``; the root is ``cache_dir`` or the default user cache."""
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_ROOT.expanduser()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{name}-{digest}"


def cached(name: str, key: dict[str, Any], rows: Callable[[], Iterable[dict[str, Any]]],
           cache_dir: str | os.PathLike | None) -> Dataset:
    """The cached dataset for ``key``, building it from ``rows()`` the first time.

    ``rows`` yields dicts with the :data:`FEATURES` columns; ``image`` is PNG bytes or None. The folder
    is written under a temporary name and renamed into place, so a concurrent or interrupted build
    never leaves a half-written split that a later load would trust.
    """
    path = cache_path(name, key, cache_dir)
    if not path.is_dir():
        columns: dict[str, list] = {c: [] for c in FEATURES}
        for row in rows():
            for c in FEATURES:
                value = row[c]
                columns[c].append({"bytes": value, "path": None} if c == "image" and value is not None else value)
        ds = Dataset.from_dict(columns, features=FEATURES)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a progress bar per tiny split is noise in the run log
        try:
            ds.save_to_disk(str(tmp))
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        (tmp / "coin-mini-key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same split first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))
