"""coin-mini Grounding (RefCOCO-style): the box of the object a referring expression describes.

Prompt choice: CoIN's grounding prompt is one line, "Please provide the bounding box coordinate of the
region this sentence describes: <expression>", and LoRASelect reads the text before ':' as the
instruction. So the coin-mini prompt is ``instruction + " " + expression`` on a single line (the whole
line is the "last line"), not ``expression + "\\n" + instruction`` like the other tasks.

Objects sit exactly on the 3x3 grid (no jitter); the target is always large (it nearly fills its cell)
and the distractors are of either size, so there are 9 possible boxes and the target's cell is drawn
uniformly (constant baseline about 1/9). Generator v3: with both sizes possible for the target (18
boxes) the tiny backbone's answers collapsed to one degenerate box, 0% after training on the task. The answer is
"[x1, y1, x2, y2]" normalised to [0, 1] with two decimals; ``refs["size"]`` is [w, h].
"""
from __future__ import annotations

import random

from tasks.synthetic.layout import Obj, Sample, box_string, cell_box, random_objects, scene_of
from tasks.synthetic.vocab import COLOURS, SHAPES


def _expressions(target: Obj, objs: list[Obj]) -> list[str]:
    """The referring expressions that pick out ``target`` and no other object."""
    others = [o for o in objs if o is not target]
    out = []
    if all(o.shape != target.shape for o in others):
        out.append(f"the {target.shape}")
    if all(o.colour != target.colour for o in others):
        out.append(f"the {target.colour} shape")
    if all((o.colour, o.shape) != (target.colour, target.shape) for o in others):
        out.append(f"the {target.colour} {target.shape}")
    same_shape = [o for o in others if o.shape == target.shape]
    if same_shape and all(o.size != target.size for o in same_shape):
        out.append(f"the {target.size} {target.shape}")
    return out


def generate(rng: random.Random, size: int) -> Sample:
    pos, tsize = rng.randrange(9), "large"
    while True:
        target = Obj(rng.choice(SHAPES), rng.choice(COLOURS), pos, tsize)
        objs = [target] + random_objects(rng, rng.randint(1, 2), cells=[p for p in range(9) if p != pos])
        expressions = _expressions(target, objs)
        if expressions:
            break
    return Sample(rng.choice(expressions), box_string(cell_box(pos, tsize)), scene_of(objs, rng, jitter=0.0),
                  {"size": [size, size]})
