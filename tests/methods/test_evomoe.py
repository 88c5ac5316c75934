"""EvoMoE (methods/evomoe.py): evolution rules, the two phases of a task (each its own optimiser and
schedule in the shared trainer), the dense base before the first task, DTR routing by modality,
expert diversity, the copied-experts ablation, resume, and tiny end-to-end runs."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import methods
from bench.moe import FFNExperts, HyperRouter, LinearRouter, SwiGLUExpert
from bench.moe.diversity import cosine_distance_matrix, diversity_report, expert_diversity, expert_gram
from bench.moe.evolution import BetaSampler
from bench.run.protocol import Hooks, run
from bench.io.records import read_record
from bench.train.phases import train_task as run_phases
from methods.base import MethodContext
from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

D, IMG, STEPS = 16, 63, 4
RANGES = [(0.90, 0.99), (0.80, 0.89), (0.70, 0.79)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models are latency-bound; on a shared 2-core machine extra threads only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator()


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    return micro_llava(seed, d=D, image_token_id=IMG)


def batches(n: int, seed: int = 0, B: int = 2) -> list[dict[str, torch.Tensor]]:
    """Model-ready batches: 4 image tokens (one 28x28 image = 4 patches) inside random text."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 60, (B, 10), generator=g)
        ids[:, 1:5] = IMG
        labels = ids.clone()
        labels[:, :5] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "pixel_values": torch.randn(B, 3, 28, 28, generator=g)})
    return out


def attached(model=None, run_seed: int = 0, **hp):
    """An attached EvoMoE; the phase tests use an even split of their 4 steps (evolution 2, router 2)."""
    hp.setdefault("evolution_fraction", 0.5)
    model = model if model is not None else tiny_llava()
    method = methods.build("evomoe", {k: str(v) for k, v in hp.items()})
    method.attach(model, MethodContext(num_tasks=2, steps_per_task=STEPS, device=torch.device("cpu"),
                                       image_token_id=IMG, run_seed=run_seed))
    return model, method


def train_task(model, method, accelerator, t: int, data, weight_decay: float = 0.0, after=lambda: None,
               begin: bool = True):
    """One harness task: begin_task, the method's phases through the shared trainer, end_task; ``after``
    runs after every optimiser step."""
    if begin:
        method.begin_task(t, None, data)
    step = method.after_optimizer_step

    def after_step():
        step()
        after()

    method.after_optimizer_step = after_step
    try:
        done = run_phases(model, method, t, None, data, STEPS, accelerator=accelerator, lr=1e-2,
                          weight_decay=weight_decay)
    finally:
        del method.after_optimizer_step
    method.end_task(t, None, data)
    return done


def groups(method) -> dict[str, list[torch.nn.Parameter]]:
    layers = list(method.layers.values())
    return {"theta1": method._expert_params([0]), "evolved": method._expert_params(range(1, 4)),
            "text": [p for m in layers for p in m.router.text.parameters()],
            "image": [p for m in layers for p in m.router.image.parameters()],
            "proj": [p for m in layers for p in m.router.proj.parameters()]}


def snap(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def same(a, params) -> bool:
    return all(torch.equal(x, p.detach()) for x, p in zip(a, params))


# --- phase 1 is exactly the dense FFN ------------------------------------------------------------
def test_evolution_phase_is_exactly_expert_one():
    model = tiny_llava()
    batch = batches(1)[0]
    with torch.no_grad():
        dense = model(**batch).logits
    model, method = attached(model)
    assert method.layers == {}                       # no MoE before the first task: row 0 is the dense base
    method.begin_task(0, None, None)
    with torch.no_grad():                            # installed but idle: E copies, top-1 over a fresh router
        assert not torch.allclose(model(**batch).logits, dense)
    phase = next(method.training_phases(0, None, None, STEPS))
    assert (phase.name, phase.steps) == ("evolution", STEPS // 2)
    assert method.phase == "evolution" and method.auxiliary_loss() is None
    g = groups(method)
    assert all(p.requires_grad for p in g["theta1"])
    assert not any(p.requires_grad for k in ("evolved", "text", "image", "proj") for p in g[k])
    h = torch.randn(2, 10, D)
    for layer in method.layers.values():
        with torch.no_grad():
            y = layer(h)
            ref = layer.experts.expert_forward(0, h.reshape(-1, D)).view_as(h)
        assert torch.equal(y, ref)  # router rows 2..N masked: weight exactly 1.0 on θ_1
        assert (layer.last_output.expert_index == 0).all()
        assert (layer.last_output.combine_weights == 1.0).all()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, dense, rtol=1e-5, atol=1e-6)


# --- evolution rules -------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["ema", "scaled"])
def test_evolution_rule_numerically(rule):
    torch.manual_seed(5)
    model, method = attached(evolution_rule=rule)
    method.begin_task(0, None, None)
    next(method.training_phases(0, None, None, STEPS))   # enters the evolution phase (scaled: snapshots θ_1)
    layers = list(method.layers.values())
    with torch.no_grad():                            # make θ_n differ from θ_1 so the readings differ
        for m in layers:
            for n in (1, 2, 3):
                for p in m.experts.expert_parameters(n):
                    p.add_(0.1 * torch.randn_like(p))
    old = [[snap(m.experts.expert_parameters(n)) for n in range(4)] for m in layers]
    deltas = [[0.05 * torch.randn_like(p) for p in m.experts.expert_parameters(0)] for m in layers]
    with torch.no_grad():                            # stands in for the optimiser step on θ_1
        for m, dl in zip(layers, deltas):
            for p, d in zip(m.experts.expert_parameters(0), dl):
                p.add_(d)
    method.after_optimizer_step()
    betas = method.evolution.last_betas
    assert betas.shape == (1, 3)                     # one β per evolved expert, shared by the layers
    for b, (lo, hi) in zip(betas[0].tolist(), RANGES):
        assert lo <= b <= hi
    for li, m in enumerate(layers):
        theta1 = m.experts.expert_parameters(0)
        for n, beta in zip((1, 2, 3), betas[0].tolist()):
            for p, o, t1, d in zip(m.experts.expert_parameters(n), old[li][n], theta1, deltas[li]):
                ema = beta * o + (1 - beta) * t1.detach()
                scaled = o + (1 - beta) * d
                assert not torch.allclose(ema, scaled)
                torch.testing.assert_close(p.detach(), ema if rule == "ema" else scaled, rtol=1e-6, atol=1e-7)
                assert not p.requires_grad and p.grad is None


def test_beta_draws_are_seeded_by_the_run_seed():
    a, b, c = (BetaSampler(RANGES, seed=s) for s in (7, 7, 8))
    da, db, dc = a.draw(), b.draw(), c.draw()
    assert torch.equal(da, db) and not torch.equal(da, dc)
    _, m0 = attached(run_seed=0)
    _, m1 = attached(run_seed=1)
    for m in (m0, m1):
        m.begin_task(0, None, None)
    assert not torch.equal(m0.evolution.sampler.draw(), m1.evolution.sampler.draw())
    per_layer = BetaSampler(RANGES, seed=0, groups=2).draw()
    assert per_layer.shape == (2, 3) and not torch.equal(per_layer[0], per_layer[1])


# --- the two phases of a task ------------------------------------------------------------------------
def test_phases_with_the_harness_trainer(accelerator):
    """4 steps, evolution_fraction 0.5, AdamW with weight decay 0.1: in steps 1-2 θ_1 trains and θ_n
    evolve while every router parameter stays bit-identical; in steps 3-4 the router trains and every
    expert stays bit-identical. Each phase has its own optimiser and a full schedule of its own."""
    model, method = attached()
    method.begin_task(0, None, None)
    g = groups(method)
    history = []
    prev = {k: snap(v) for k, v in g.items()}
    done = train_task(model, method, accelerator, 0, batches(STEPS), weight_decay=0.1, begin=False,
                      after=lambda: history.append({k: snap(v) for k, v in g.items()}))
    assert [(name, stats.steps) for name, _, stats in done.phases] == [("evolution", 2), ("router", 2)]
    assert done.trained_parameters == sum(p.numel() for k in ("theta1", "text", "image", "proj") for p in g[k])
    assert done.evolved_parameters == sum(p.numel() for p in g["evolved"])
    assert [m.top_k for m in method.layers.values()] == [1, 1, 1, 1]  # every decoder layer
    for step, now in enumerate(history):
        evolution = step < 2
        moved = {k: not all(torch.equal(a, b) for a, b in zip(prev[k], now[k])) for k in g}
        assert moved["theta1"] == evolution and moved["evolved"] == evolution, (step, moved)
        assert all(moved[k] != evolution for k in ("text", "image", "proj")), (step, moved)
        prev = now
    assert method.phase == "idle" and not any(p.requires_grad for v in g.values() for p in v)
    report = method.task_report()
    assert report["phases"] == {"evolution_steps": 2, "router_steps": 2, "joint_steps": 0}
    assert report["expert_diversity"]["mean"] > 0
    assert all(abs(sum(u) - 1) < 1e-9 for u in report["expert_utilisation"].values())
    assert json.dumps(report)


def test_lr_scale_multiplies_every_phase_learning_rate(accelerator):
    """``lr_scale`` (a field of every method's hyper-parameters) scales the budget lr of each phase."""
    model, method = attached(lr_scale=3)
    done = train_task(model, method, accelerator, 0, batches(STEPS))
    assert [(name, lr) for name, lr, _ in done.phases] == [("evolution", pytest.approx(3e-2)),
                                                          ("router", pytest.approx(3e-2))]
    with pytest.raises(methods.MethodError):
        methods.build("evomoe", {"lr_scale": "0"})


# --- DTR: image and text tokens with the same hidden state ----------------------------------------
@pytest.mark.parametrize("router", ["dtr", "linear"])
def test_router_sees_token_types_through_before_forward(router):
    torch.manual_seed(1)
    model, method = attached(router=router)
    method.begin_task(0, None, None)
    assert len(method.layers) == 4
    ids = torch.randint(0, 60, (1, 32))
    ids[0, :16] = IMG
    method.before_forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "prefill")
    u = torch.randn(16, D)
    h = torch.cat([u, u]).unsqueeze(0)               # the same 16 states as image then as text tokens
    for layer in method.layers.values():
        with torch.no_grad():
            layer(h)
        logits = layer.last_output.router_logits
        if router == "dtr":
            assert isinstance(layer.router, HyperRouter)
            assert not torch.allclose(logits[:16], logits[16:])
            assert (logits[:16].argmax(1) != logits[16:].argmax(1)).any()
            torch.testing.assert_close(logits[:16], layer.router.proj(layer.router.image(u)))
        else:
            assert isinstance(layer.router, LinearRouter)
            assert torch.equal(logits[:16], logits[16:])


# --- diversity ----------------------------------------------------------------------------------
def _expert(gate, up, down) -> SwiGLUExpert:
    ex = SwiGLUExpert(2, 1)
    with torch.no_grad():
        ex.gate_proj.weight.copy_(torch.tensor([gate], dtype=torch.float32))
        ex.up_proj.weight.copy_(torch.tensor([up], dtype=torch.float32))
        ex.down_proj.weight.copy_(torch.tensor(down, dtype=torch.float32).view(2, 1))
    return ex


def test_diversity_on_hand_made_experts():
    v = ([1.0, 2.0], [0.0, 1.0], [1.0, 0.0])
    w = ([2.0, -1.0], [1.0, 0.0], [0.0, 3.0])        # <v, w> = 2 - 2 = 0
    scale = lambda t, s: tuple([s * x for x in part] for part in t)  # noqa: E731
    experts = FFNExperts([_expert(*v), _expert(*scale(v, 2.0)), _expert(*w), _expert(*scale(v, -1.0))])
    gram = expert_gram(experts)
    assert gram[0, 0].item() == 7.0 and gram[0, 2].item() == 0.0
    expected = torch.tensor([[0, 0, 1, 2], [0, 0, 1, 2], [1, 1, 0, 1], [2, 2, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(cosine_distance_matrix(gram), expected)
    assert expert_diversity(experts) == pytest.approx(7 / 6)
    zero = FFNExperts([_expert(*scale(v, 0.0)), _expert(*scale(v, 0.0)), _expert(*v)])
    assert cosine_distance_matrix(expert_gram(zero)).tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    report = diversity_report({0: experts, 2: FFNExperts([_expert(*v), _expert(*w)])})
    assert report["per_layer"] == {"0": pytest.approx(7 / 6, rel=1e-5), "2": 1.0}
    assert report["mean"] == pytest.approx((7 / 6 + 1) / 2, rel=1e-5) and len(report["pairwise"]["0"]) == 4


# --- copied-experts ablation ------------------------------------------------------------------------
def test_copied_experts_start_identical_and_train_jointly(accelerator):
    _, evolved = attached()
    evolved.begin_task(0, None, None)
    assert diversity_report(evolved.layers)["mean"] == 0.0
    model, method = attached(experts="copied")
    method.begin_task(0, None, None)
    assert diversity_report(method.layers)["mean"] == 0.0      # the "expert uniformity" EvoMoE targets
    phases = list(method.training_phases(0, None, None, STEPS))
    assert [p.name for p in phases] == ["joint"] and phases[0].evolving == []
    assert {id(p) for p in phases[0].parameters} == {id(p) for m in method.layers.values() for p in m.parameters()}
    assert method.phase == "joint" and all(bool(m.router.row_mask.all()) for m in method.layers.values())
    experts = snap(method._expert_params(range(4)))
    method.after_optimizer_step()                    # no evolution in this ablation
    assert same(experts, method._expert_params(range(4)))
    method.end_task(0, None, None)
    done = train_task(model, method, accelerator, 1, batches(STEPS, seed=3))
    assert done.trained_parameters == sum(p.numel() for m in method.layers.values() for p in m.parameters())
    assert method.task_report()["expert_diversity"]["mean"] > 0
    assert method.auxiliary_loss() is not None


# --- resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["ema", "scaled"])
def test_state_dict_round_trip_reproduces_the_next_task(accelerator, rule):
    model_a, a = attached(tiny_llava(0), evolution_rule=rule)
    train_task(model_a, a, accelerator, 0, batches(STEPS, seed=0))
    state = a.state_dict()
    json.dumps({k: v for k, v in state.items() if not torch.is_tensor(v)})
    saved = {k: v.clone() for k, v in model_a.state_dict().items()}

    model_b, b = attached(tiny_llava(0), evolution_rule=rule)
    b.load_state_dict(state)
    model_b.load_state_dict(saved)
    for m, x in ((model_a, a), (model_b, b)):
        train_task(m, x, accelerator, 1, batches(STEPS, seed=1))
    assert torch.equal(a.evolution.last_betas, b.evolution.last_betas)
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa) and b.tasks_seen == 2
    _, other = attached(evolution_rule="scaled" if rule == "ema" else "ema")
    with pytest.raises(ValueError, match="hyper-parameters"):
        other.load_state_dict(state)


def test_hyperparameter_validation():
    for bad in ({"evolution_fraction": "1.5"}, {"evolution_rule": "sgd"}, {"router": "mlp"},
                {"experts": "fresh"}, {"beta_ranges": "0.9,0.99"}, {"beta_ranges": "0.9,0.8,0.8,0.89,0.7,0.79"},
                {"num_experts": "1"}):
        with pytest.raises(methods.MethodError):
            methods.build("evomoe", bad)
    hp = methods.hparams_for("evomoe", {"beta_ranges": "0.5,0.6,0.1,0.2,0,0"})
    assert hp.pairs() == [(0.5, 0.6), (0.1, 0.2), (0.0, 0.0)]
    assert (hp.top_k, hp.aux_loss_coef, hp.num_experts, hp.evolution_fraction) == (1, 0.001, 4, 0.8)


# --- end to end -------------------------------------------------------------------------------------
class EvolvingCheck(Hooks):
    """The registry test's frozen check, per phase, counting the phase's ``evolving`` as changed by it."""

    def __init__(self):
        super().__init__(before_train=self.before, after_train=self.after)
        self.checked = 0

    def before(self, t, method, model, phase):
        self.trained = {id(p) for p in phase.parameters}
        self.evolving = {id(p) for p in phase.evolving}
        named = list(model.named_parameters())
        self.frozen = {n: p.detach().clone() for n, p in named if id(p) not in self.trained | self.evolving}
        self.evo = {n: p.detach().clone() for n, p in named if id(p) in self.evolving}

    def after(self, t, method, model, phase):
        now = dict(model.named_parameters())
        assert all(torch.equal(v, now[n]) for n, v in self.frozen.items())
        if method.phase == "evolution":   # the router phase evolves nothing
            assert self.evo and all(not torch.equal(v, now[n]) for n, v in self.evo.items())
        assert all(not now[n].requires_grad and now[n].grad is None for n in self.evo)
        self.checked += 1


@pytest.mark.parametrize("overrides", [{}, {"router": "linear", "experts": "copied"}])
def test_end_to_end_tiny_run(tiny_config, tiny_run, overrides):
    if overrides:
        hooks = EvolvingCheck()
        record = read_record(run(tiny_config(method="evomoe", method_set=overrides), hooks))
    else:  # the defaults: the session's shared run (tests/methods/conftest.py), whose FrozenCheck makes
        # the same per-phase checks (frozen unchanged; evolved moved, outside autograd)
        done = tiny_run("evomoe")
        hooks, record = done.frozen, done.record
        assert [(t, name, n > 0) for t, name, n in done.phases] == [
            (t, name, name == "evolution") for t in (0, 1) for name in ("evolution", "router")]
    assert hooks.checked == (4 if overrides.get("experts") != "copied" else 2) and record["method"] == "evomoe"
    assert record["hparams"]["router"] == overrides.get("router", "dtr")
    assert len(record["accuracy_matrix"]) == 3
    for rep in record["method_reports"]:
        assert set(rep["expert_diversity"]) == {"mean", "per_layer", "pairwise"}
        assert rep["expert_diversity"]["mean"] > 0
        assert all(len(u) == 4 for u in rep["expert_utilisation"].values())
    for counts in record["parameters"]:
        assert 0 < counts["trained"] <= counts["total"]
        assert 0 < counts["activated_per_token"] < counts["total"]
