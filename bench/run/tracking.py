"""Tracked evaluations: what a run scores besides its own tasks after row 0 and after every stage
(``--track lmeval:TASK``; the record's ``tracked``, one entry per matrix row).

The run loop knows trackers only through ``Tracker``: a name list and a callable on the model as it is
now. The command line builds them (the lm-eval ones: ``bench.lmeval.track.trackers``) and hands them to
``bench.run.protocol.run``, so the run loop never imports what a tracker evaluates with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bench.config import ConfigError

# (model, method, backbone, accelerator) -> {tracked name: {metric: value, ...}} for every name in ``names``
Evaluate = Callable[[Any, Any, Any, Any], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Tracker:
    """Scores the tracked names ``names`` (entries of ``RunConfig.track``) on the model as it is now.
    ``evaluate`` must leave every random generator as it found it, so tracking never changes the run's
    own results."""

    names: tuple[str, ...]
    evaluate: Evaluate


def check_trackers(track: Sequence[str], trackers: Sequence[Tracker]) -> None:
    """Every entry of ``cfg.track`` is scored by exactly one tracker, and nothing else is."""
    given = [name for t in trackers for name in t.names]
    if sorted(given) != sorted(track):
        raise ConfigError(f"the run tracks {', '.join(track) or 'nothing'} but its trackers score "
                          f"{', '.join(given) or 'nothing'}; build them from the run's config "
                          "(the command line does: bench.lmeval.track.trackers).")


def track_row(trackers: Sequence[Tracker], model, method, backbone, accelerator) -> dict[str, dict[str, Any]]:
    """Every tracker's scores on the model as it is now, ``{name: {metric: value, ...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for tracker in trackers:
        out.update(tracker.evaluate(model, method, backbone, accelerator))
    return out
