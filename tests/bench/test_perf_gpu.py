"""``python -m bench perf gpu``: the dry run prints the plan and the 7B memory table (computed on the meta
device) and exits 0 on any machine; without a GPU a real run refuses with exit 1."""
from __future__ import annotations

import pytest
import torch

from bench.__main__ import main


def test_dry_run_prints_the_plan_and_the_memory_table(capsys):
    assert main(["perf", "gpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for section in ("coin ", "dispatch ", "steps ", "decode "):
        assert f"  {section}" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and " B |" in line}
    assert set(rows) == {"seq-ft", "moelora", "naive-expansion", "cmoe", "evomoe", "moe-llava"}
    # MoE-LLaVA copies the FFN of every other decoder layer into 4 experts: ~13.6 B parameters, ~8.7 B trained
    assert "| 13.56 B | 8,657 M |" in rows["moe-llava"] and "| 7.14 B | 80 M |" in rows["seq-ft"]
    assert "nothing measured" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_a_gpu_the_check_refuses(capsys):
    assert main(["perf", "gpu", "--only", "decode"]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["perf", "gpu", "--only", "nope"]) == 2
