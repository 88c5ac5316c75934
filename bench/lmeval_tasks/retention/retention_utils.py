"""``!function`` hooks of the retention tasks: the local JSONL next to this file, no download."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("retention.jsonl")


def load(**_metadata: Any) -> dict[str, Any]:
    """``custom_dataset`` hook: ``{"test": datasets.Dataset}`` of the 300 copying items."""
    import datasets

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
