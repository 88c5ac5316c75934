"""The README's "Add your own method" example is real code: it registers a method that then runs
through the same two-task end-to-end check as every built-in method."""
from __future__ import annotations

import re
from pathlib import Path

from frozen_check import FrozenCheck  # tests/ is on sys.path through its conftest.py

import methods
from bench.run.protocol import run
from bench.io.records import read_record

README = Path(__file__).resolve().parent.parent / "README.md"


def example_source() -> str:
    text = README.read_text()
    match = re.search(r"<!-- example-method -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its example-method code block"
    return match.group(1)


def test_readme_example_method_runs(tiny_config):
    namespace: dict = {}
    exec(compile(example_source(), "README.md:example-method", "exec"), namespace)
    assert "norm-tune" in methods.names()
    hooks = FrozenCheck()
    record = read_record(run(tiny_config(method="norm-tune", method_set={"layers": "2"}), hooks))
    assert hooks.checked == 2
    assert record["hparams"] == {"layers": 2, "lr_scale": 1.0}  # lr_scale: every method's base hyper-parameter
    trained = record["parameters"][0]["trained"]
    assert 0 < trained < 1000  # two RMSNorm gain vectors per decoder layer, top 2 layers only


def test_the_layout_section_names_every_folder():
    """A newcomer finds any part from the README alone: every top-level folder and every folder one
    level inside bench/, methods/ and tasks/ appears (as ``name/``) in the Layout block."""
    text = README.read_text()
    match = re.search(r"## Layout\n\n```\n(.*?)```", text, re.S)
    assert match, "README lost its Layout block"
    layout = match.group(1)
    root = README.parent
    folders = [p for p in ("bench", "methods", "tasks", "results", "docs", "tests")]
    folders += [f"{top}/{p.name}" for top in ("bench", "methods", "tasks") for p in sorted((root / top).iterdir())
                if p.is_dir() and not p.name.startswith((".", "_"))]
    missing = [f for f in folders if f"{f.rsplit('/', 1)[-1]}/" not in layout]
    assert missing == []
