"""tasks.chance as a function: ``chance_levels`` equals ``majority_baseline`` and is cached per process (a
second call loads and renders nothing), ``mode`` selects the scorer, and the CLI prints the table."""
from __future__ import annotations

from tasks.base import DataSpec
from tasks.chance import _chance_of, chance_levels, main, majority_baseline
from tasks.synthetic import draw


def test_chance_levels_cached(tmp_path, capsys) -> None:
    spec = DataSpec(mini_train=12, mini_test=6, cache_dir=str(tmp_path))
    names = ("vqav2", "grounding")
    levels = chance_levels(spec, names)
    assert list(levels) == list(names) and levels == majority_baseline(spec, list(names))
    assert all(0.0 <= v <= 100.0 for v in levels.values())
    renders, misses = draw.render_count, _chance_of.cache_info().misses
    assert chance_levels(spec, list(names)) == levels
    assert draw.render_count == renders and _chance_of.cache_info().misses == misses
    clean = chance_levels(spec, ["grounding"], mode="clean")
    assert clean == majority_baseline(spec, ["grounding"], mode="clean")
    assert _chance_of.cache_info().misses == misses + 1  # another mode is another entry
    assert main(["--mini-train", "12", "--mini-test", "6", "--cache-dir", str(tmp_path)]) == 0
    assert "vqav2" in capsys.readouterr().out
