"""``!function`` hooks of the retention tasks: the local JSONL next to this file, no download."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

DATA = Path(__file__).with_name("retention.jsonl")


def load(**_metadata: Any) -> dict[str, Any]:
    """``custom_dataset`` hook: ``{"test": datasets.Dataset}`` of the 300 items (copying and captions)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def copy_items(dataset):
    """``process_docs`` hook of retention_copy: the copying items only."""
    return dataset.filter(lambda doc: doc["kind"] == "copy")
