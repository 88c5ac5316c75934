"""GPU readiness: a training step reads no tensor values back to the host in this
project's code, except the per-expert batch sizes an MoE layer dispatches by (and, for the methods
that need them, the kept assignments under a capacity and the DTR router's image/text split)."""
import pytest

import methods
from bench.perf.syncs import count

# reads per MoE layer per step the design needs (the most any method needs: MoE-LLaVA's counts, kept
# assignments and the capacity's CPU scalar), and per batch (EvoMoE's DTR router: the image/text
# split, shared by every layer)
PER_MOE_LAYER = 3
PER_BATCH = 2


@pytest.mark.parametrize("name", methods.names())
def test_training_step_reads_back_only_what_the_design_needs(name):
    steps = 4
    reads, method = count(name, steps)
    # " via ": inside a library (AdamW's CPU step counters, transformers' mask building); EvoMoE's
    # evolution draws its beta on a CPU generator (bench.moe.evolution.BetaSampler): host tensors only
    ours = {site: n for site, n in reads.sites.items()
            if " via " not in site and "bench/moe/evolution.py" not in site}
    layers = len(getattr(method, "layers", None) or {})
    # a router reads its mask once when it first routes (then only when the mask changes)
    per_step = sum(n for site, n in ours.items() if "routable_rows" not in site) / steps
    assert per_step <= PER_MOE_LAYER * layers + (PER_BATCH if layers else 0), ours
    if layers == 0:
        assert not ours, ours
    else:
        assert any("dispatch_sorted" in site for site in ours), ours
