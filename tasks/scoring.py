"""The eight CoIN scorers as pure functions over predictions aligned with references.

This is how the harness scores its own evaluation (one prediction per test record, in record order)
and how ``bench score --mode clean`` scores a prediction file once it is matched to the annotation
records. Scoring a prediction *file* as the official scripts do (their denominators, id matching and
repeated lines) is :mod:`tasks.official`; it uses the per-answer rules defined here.

``mode="official"`` applies each official script's per-answer rule as published in
``zackschen/CoIN`` (commit 4122465), ``ETrain/Eval/LLaVA/CoIN/`` (``eval_science_qa.py``,
``eval_textvqa.py`` + ``m4c_evaluator.py``, ``eval_ImagetNet.py``, ``convert_gqa_for_eval.py`` +
``eval_gqa.py``, ``eval_vizwiz.py``, ``eval_grounding.py``, ``eval_vqav2.py``, ``eval_ocrvqa.py``),
quirks included, with the script's own float expression for the accuracy, so the numbers compare with
published CoIN tables. ``mode="clean"`` applies the same rule without the quirks: regex box parsing
(first four numbers), normalised exact match, VQA soft accuracy with a de-bugged EvalAI
normalisation where ten reference answers exist.

Inputs
------
``predictions[i]`` is the generated text for ``references[i]``, or ``None`` when the prediction is
missing. Every reference counts: a missing prediction is wrong and stays in the denominator (reported
in ``extras["missing"]``). With one prediction per reference this is exactly the official figure;
where predictions are missing the official scripts differ by task (most divide by the prediction
lines instead), see :mod:`tasks.official`.

Each reference is ``{"question_id": str, "answer": str, **refs}``. The refs keys each scorer reads
(the coin reader in :mod:`tasks.coin` and the coin-mini generator fill them):

- ``scienceqa``: ``answer`` (str, the option letter "A".."E"); ``num_options`` (int, optional: the
  number of choices, a parsed letter past it is invalid; it never changes the official result, it
  validates the answer); ``has_image`` (bool, optional: adds ``extras["img_accuracy"]``, the IMG subset).
- ``textvqa``: ``answers`` (list of 10 str, the human answers of ``TextVQA_0.5.1_val.json``). When
  absent, ``[answer] * 10`` is used (a normalised exact match) and counted in
  ``extras["single_answer_fallback"]``.
- ``imagenet``: only ``answer`` (the class name).
- ``gqa``: ``official_answer`` (str, optional: the answer in ``testdev_balanced_questions.json``, which
  is what ``eval_gqa.py`` compares with; default ``answer``); ``is_balanced`` (bool, optional, default
  True: only balanced questions are scored); ``types`` (dict, optional: ``{"structural": str,
  "semantic": str}``, other keys ignored, for the breakdowns in ``extras``).
- ``vizwiz`` / ``vqav2``: ``answer``; ``answers`` (list of 10 str, optional, clean mode only: VQA soft
  accuracy instead of normalised exact match).
- ``grounding``: ``answer`` (str, the box ``"[x1, y1, x2, y2]"`` normalised to [0, 1]); ``size``
  ([w, h] positive numbers; official mode scales both boxes by max(w, h)).
- ``ocrvqa``: only ``answer``.

Output: :class:`tasks.base.ScoreResult` with ``accuracy`` in percent, computed with the same float
expression as the official script, ``per_sample`` in [0, 1] aligned with the references and
``extras`` (always ``missing``; GQA breakdowns; ScienceQA IMG accuracy). ``n`` is the denominator:
the number of references, except GQA where it is the number of balanced questions.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from tasks import declared
from tasks.types import Scorer, ScoreResult, TaskError

MODES = ("official", "clean")

# --------------------------------------------------------------------------------------------------
# EvalAI answer normalisation (m4c_evaluator.py: EvalAIAnswerProcessor), used by TextVQA.
# --------------------------------------------------------------------------------------------------

# The contraction table of the EvalAI processor, as data. The capitalised keys ("Id've", "Im", ...)
# can never match because the text is lower-cased first; they are kept so the table is the published one.
_CONTRACTIONS_TEXT = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've something'dve:something'd've
somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've
therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(":", 1) for pair in _CONTRACTIONS_TEXT.split())

NUMBER_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Order matters: each character is handled in turn on the progressively rewritten string.
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
                "`", ",", "?", "!")

# "(?!<=\d)" is a typo for a look-behind in the published regex: as a look-ahead for the two characters
# "<=" it is always true before a ".", so a period is kept only when a *digit follows* it ("3.5" and
# ".5" keep theirs, "5." and "a.b" lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# The published call is PERIOD_STRIP.sub("", text, re.UNICODE): the flag lands in the *count*
# argument, so at most int(re.UNICODE) == 32 periods are removed.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def evalai_normalize(text: str) -> str:
    """``m4c_evaluator.py`` ``EvalAIAnswerProcessor.__call__`` (lines 181-218) exactly as published:
    lower-case, drop "," and "?", split "'s", newlines and tabs to spaces, strip; the punctuation rule;
    at most 32 periods stripped; number words, articles, contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _official_punctuation(text)
    return _digits_and_articles(text)


def _official_punctuation(in_text: str) -> str:
    """Each punctuation mark is deleted everywhere if it appears next to a space *anywhere in the
    whole string* (so one " - " removes every "-", also in "x-ray"), otherwise replaced by a space
    everywhere. The test always looks at the input string, not at the partly rewritten one.
    The digit-comma-digit alternative can never fire: commas were already removed upstream."""
    has_digit_comma = _COMMA_STRIP.search(in_text) is not None
    out_text = in_text
    for p in PUNCTUATIONS:
        if (p + " " in in_text or " " + p in in_text) or has_digit_comma:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _PERIOD_STRIP.sub("", out_text, count=_OFFICIAL_PERIOD_COUNT)


def _digits_and_articles(text: str) -> str:
    """Number words to digits, articles dropped, then the contraction table (in that order)."""
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


_CLEAN_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_CLEAN_PUNCT = re.compile(r'[;/\[\]"{}()=+\\_\-><@`,?!:*#%&|~^]')


def clean_normalize(text: str) -> str:
    """The EvalAI normalisation without its bugs, for ``mode="clean"``: lower-case, every
    punctuation mark becomes a space (judged per occurrence, not per string), a period survives only
    between two digits (no 32-period cap), then number words, articles and contractions as EvalAI."""
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = text.replace("'s", " 's")
    text = _CLEAN_PUNCT.sub(" ", text)
    text = _CLEAN_PERIOD.sub("", text)
    return _digits_and_articles(text)


# --------------------------------------------------------------------------------------------------
# VQA soft accuracy (m4c_evaluator.py: TextVQAAccuracyEvaluator)
# --------------------------------------------------------------------------------------------------

def vqa_soft_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """Soft score of every distinct normalised human answer: the mean over the leave-one-out subsets
    of the ten answers of min(1, matches / 3). Summed in list order as published, so the floats match."""
    scores: dict[str, float] = {}
    for candidate in set(gt_answers):
        accs = []
        for left_out in range(len(gt_answers)):
            matches = sum(1 for j, a in enumerate(gt_answers) if j != left_out and a == candidate)
            accs.append(min(1, float(matches) / 3))
        scores[candidate] = sum(accs) / len(accs)
    return scores


def vqa_soft_accuracy(prediction: str, answers: Sequence[str], normalize: Callable[[str], str]) -> float:
    """Soft accuracy of one prediction against its ten answers, both sides normalised."""
    table = vqa_soft_scores([normalize(a) for a in answers])
    return float(table.get(normalize(prediction), 0.0))


# --------------------------------------------------------------------------------------------------
# Per-task parsing and matching rules
# --------------------------------------------------------------------------------------------------

SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
_SINGLE_CHAR_WORD = re.compile(r"\b(\w)\b")


def scienceqa_parse_official(text: str) -> str:
    """``eval_science_qa.py``: exact option letter; else ``"X. ..."``; else the first single-character
    word, upper-cased. That fallback is why "a cat" reads as "A" and "3 cats" as "3" (invalid);
    no match gives "FAILED"."""
    if text in SCIENCEQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SCIENCEQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    words = _SINGLE_CHAR_WORD.findall(text)
    return words[0].upper() if words else "FAILED"


_SQA_CLEAN_LEAD = re.compile(r"^\(?([A-E])(?:[.):]|$)")
_SQA_CLEAN_PHRASE = re.compile(r"answer is:?\s*\(?([A-E])\b", re.IGNORECASE)


def scienceqa_parse_clean(text: str) -> str:
    """Clean parser: a leading letter written as an option ("B", "B.", "(B)", "B)", "B:") or
    "The answer is B"; articles and other one-letter words are never taken for a letter."""
    text = text.strip()
    m = _SQA_CLEAN_LEAD.match(text) or _SQA_CLEAN_PHRASE.search(text)
    return m.group(1) if m else "FAILED"


def imagenet_match_official(prediction: str, answer: str) -> bool:
    """``eval_ImagetNet.py``: case-sensitive substring either way, no normalisation. An empty
    prediction is a substring of every class name, so it counts correct."""
    return answer in prediction or prediction in answer


def gqa_prediction_official(text: str) -> str:
    """``convert_gqa_for_eval.py`` line 14: ``text.rstrip('.').lower()`` and nothing more. Spaces
    survive on both ends, and "yes. " keeps its period (rstrip('.') stops at the space)."""
    return text.rstrip(".").lower()


def ocrvqa_match_official(prediction: str, answer: str) -> bool:
    """``eval_ocrvqa.py``: a prediction containing "Unanswerable" (case-sensitive) is skipped, i.e.
    wrong but still in the denominator; otherwise case-insensitive exact match."""
    if "Unanswerable" in prediction:
        return False
    return prediction.lower() == answer.lower()


def parse_box_string(box: str) -> list[float]:
    """The ground-truth box parser of ``eval_grounding.py``: drop brackets, split on commas, float().
    Raises ValueError when it is not four numbers."""
    values = [float(x) for x in box.replace("[", "").replace("]", "").split(",")]
    if len(values) != 4:
        raise ValueError(f"expected 4 numbers, got {len(values)}")
    return values


def grounding_parse_official(text: str) -> list[float] | None:
    """``eval_grounding.py`` lines 70-73: drop the brackets, then drop the first and last
    *characters* before splitting on commas; nothing is trimmed first. With brackets already gone this
    eats a digit: "[0.12, 0.34, 0.56, 0.78]" parses as (.12, .34, .56, .7), a leading "1.0" becomes
    ".0", and in " [0.1, ...]" the space is the character dropped. Anything but four floats is None
    (the script skips it, so it counts wrong)."""
    text = text.replace("[", "").replace("]", "")
    try:
        values = [float(x) for x in text[1:-1].split(",")]
    except ValueError:
        return None
    return values if len(values) == 4 else None


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def grounding_parse_clean(text: str) -> list[float] | None:
    """Clean box parser: the first four numbers in the text, None when there are fewer."""
    numbers = _NUMBER.findall(text)
    return [float(x) for x in numbers[:4]] if len(numbers) >= 4 else None


def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes with the published arithmetic (no clamping of inverted boxes,
    0 when the union is not positive)."""
    x1, y1, x2, y2 = box1
    x21, y21, x22, y22 = box2
    inter = max(0, min(x2, x22) - max(x1, x21)) * max(0, min(y2, y22) - max(y1, y21))
    union = (x2 - x1) * (y2 - y1) + (x22 - x21) * (y22 - y21) - inter
    return inter / union if union > 0 else 0


def grounding_correct_official(prediction: str, gt_box: Sequence[float], size: Sequence[float]) -> bool:
    """Both boxes are multiplied by max(w, h) before the IoU. Mathematically a no-op, but the rounding
    of the scaled floats decides boxes at exactly IoU = 0.5 under the strict "> 0.5"."""
    pred = grounding_parse_official(prediction)
    if pred is None:
        return False
    scale = max(size)
    return box_iou([x * scale for x in pred], [x * scale for x in gt_box]) > 0.5


def grounding_correct_clean(prediction: str, gt_box: Sequence[float]) -> bool:
    """Clean rule: first four numbers of the prediction, IoU on the normalised boxes, > 0.5."""
    pred = grounding_parse_clean(prediction)
    return pred is not None and box_iou(pred, gt_box) > 0.5


# --------------------------------------------------------------------------------------------------
# Reference access with task-level error messages
# --------------------------------------------------------------------------------------------------

def _ref_error(task: str, index: int, ref: dict[str, Any], key: str, problem: str) -> TaskError:
    qid = ref.get("question_id", "?")
    return TaskError(f"{task} reference {index} (question_id {qid!r}): refs key '{key}' {problem}")


def _answer(task: str, index: int, ref: dict[str, Any], key: str = "answer") -> str:
    value = ref.get(key)
    if not isinstance(value, str):
        raise _ref_error(task, index, ref, key, f"must be a string, got {type(value).__name__}")
    return value


def _answers(task: str, index: int, ref: dict[str, Any], required_len: int | None) -> list[str] | None:
    """Optional ``answers`` list; when ``required_len`` is set the list must have that length."""
    value = ref.get("answers")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise _ref_error(task, index, ref, "answers", "must be a list of strings")
    if required_len is not None and len(value) != required_len:
        # m4c_evaluator.py asserts ten answers; a different count cannot be scored officially.
        raise _ref_error(task, index, ref, "answers", f"must hold {required_len} answers, got {len(value)}")
    return value


def _size(task: str, index: int, ref: dict[str, Any]) -> list[float]:
    value = ref.get("size")
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise _ref_error(task, index, ref, "size", f"must be [w, h] with positive numbers, got {value!r}")
    return list(value)


def _result(task: str, mode: str, per_sample: list[float], n: int, accuracy: float, missing: int,
            counted: list[bool] | None = None, **extras: Any) -> ScoreResult:
    return ScoreResult(task=task, mode=mode, n=n, accuracy=accuracy, per_sample=per_sample,
                       extras={"missing": missing, **extras}, counted=counted)


def _pct_right_over_total(right: float, total: int) -> float:
    """``100. * right / total``: the expression of the ImageNet, VizWiz, VQAv2, OCR-VQA and grounding
    scripts (evaluated left to right, which matters for the last bit)."""
    return 100.0 * right / total


# --------------------------------------------------------------------------------------------------
# The eight scorers: (predictions, references, mode) -> ScoreResult
# --------------------------------------------------------------------------------------------------

def score_scienceqa(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                    mode: str = "official") -> ScoreResult:
    """Option-letter accuracy (``eval_science_qa.py``); acc = correct / total * 100."""
    parse = scienceqa_parse_official if mode == "official" else scienceqa_parse_clean
    per_sample: list[float] = []
    img: list[float] = []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        answer = _answer("scienceqa", i, ref)
        n_opt = ref.get("num_options", len(SCIENCEQA_OPTIONS))
        if not isinstance(n_opt, int) or isinstance(n_opt, bool) or not 1 <= n_opt <= len(SCIENCEQA_OPTIONS):
            raise _ref_error("scienceqa", i, ref, "num_options", f"must be an int in 1..5, got {n_opt!r}")
        valid = SCIENCEQA_OPTIONS[:n_opt]
        if answer not in valid:
            raise _ref_error("scienceqa", i, ref, "answer", f"must be one of {', '.join(valid)}, got {answer!r}")
        # A missing prediction is scored as the text "FAILED", as the official script does.
        letter = parse(pred if pred is not None else "FAILED")
        ok = float(letter in valid and letter == answer)
        per_sample.append(ok)
        if ref.get("has_image"):
            img.append(ok)
    total = len(per_sample)
    extras: dict[str, Any] = {}
    if img:
        extras["img_accuracy"] = sum(img) / len(img) * 100
        extras["img_n"] = len(img)
    return _result("scienceqa", mode, per_sample, total, sum(per_sample) / total * 100,
                   _count_missing(predictions), **extras)


def score_textvqa(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                  mode: str = "official") -> ScoreResult:
    """VQA soft accuracy against the ten TextVQA answers with EvalAI normalisation
    (``eval_textvqa.py`` + ``m4c_evaluator.py``); acc = 100 * (sum / n)."""
    normalize = evalai_normalize if mode == "official" else clean_normalize
    per_sample: list[float] = []
    fallback = 0
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        answer = _answer("textvqa", i, ref)
        answers = _answers("textvqa", i, ref, required_len=10)
        if answers is None:
            # Without TextVQA_0.5.1_val.json only CoIN's single answer is known: ten copies of it
            # make the soft score a normalised exact match. Counted so the fallback is visible.
            answers = [answer] * 10
            fallback += 1
        per_sample.append(0.0 if pred is None else vqa_soft_accuracy(pred, answers, normalize))
    n = len(per_sample)
    return _result("textvqa", mode, per_sample, n, 100.0 * (sum(per_sample) / n), _count_missing(predictions),
                   single_answer_fallback=fallback)


def _score_each(task: str, predictions: Sequence[str | None], references: Sequence[dict[str, Any]], mode: str,
                official: Callable[[str, Any], float], clean: Callable[[str, Any, int, dict[str, Any]], float],
                reference: Callable[[str, int, dict[str, Any]], Any] = _answer) -> ScoreResult:
    """The per-sample loop shared by the scorers whose accuracy is right / total: ``reference`` reads
    (and validates, even when the prediction is missing) what the rule compares against; a missing
    prediction is wrong; ``official`` or ``clean`` scores the rest."""
    per_sample = []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        target = reference(task, i, ref)
        if pred is None:
            per_sample.append(0.0)
        elif mode == "official":
            per_sample.append(float(official(pred, target)))
        else:
            per_sample.append(float(clean(pred, target, i, ref)))
    n = len(per_sample)
    return _result(task, mode, per_sample, n, _pct_right_over_total(sum(per_sample), n), _count_missing(predictions))


def score_imagenet(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                   mode: str = "official") -> ScoreResult:
    """Class-name accuracy (``eval_ImagetNet.py``). Alignment is by list position, which the caller
    guarantees; official rule is the substring test either way, clean rule normalised exact match."""
    return _score_each("imagenet", predictions, references, mode, imagenet_match_official,
                       lambda pred, answer, i, ref: clean_normalize(pred) != ""
                       and clean_normalize(pred) == clean_normalize(answer))


def _gqa_avg_pct(values: Sequence[float]) -> float:
    """``eval_gqa.py``: avg(l) * 100 with avg([]) == 0."""
    return (float(sum(values)) / len(values) if values else 0) * 100


def score_gqa(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
              mode: str = "official") -> ScoreResult:
    """GQA accuracy over balanced questions (``convert_gqa_for_eval.py`` + ``eval_gqa.py``), with the
    binary/open and per structural / semantic type breakdowns when ``types`` are given."""
    per_sample: list[float] = []
    balanced: list[float] = []
    counted: list[bool] = []
    groups: dict[str, dict[str, list[float]]] = {"structural": {}, "semantic": {}}
    answer_kind: dict[str, list[float]] = {"binary": [], "open": []}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        gold = _answer("gqa", i, ref, "official_answer") if "official_answer" in ref else _answer("gqa", i, ref)
        if pred is None:
            ok = False
        elif mode == "official":
            ok = gqa_prediction_official(pred) == gold  # the gold answer is compared as stored
        else:
            ok = clean_normalize(pred) == clean_normalize(gold)
        per_sample.append(float(ok))
        counted.append(bool(ref.get("is_balanced", True)))
        if not counted[-1]:
            continue  # eval_gqa.py scores only balanced questions
        balanced.append(float(ok))
        types = ref.get("types")
        if isinstance(types, dict) and "structural" in types:
            answer_kind["open" if types["structural"] == "query" else "binary"].append(float(ok))
            for key in ("structural", "semantic"):
                if key in types:
                    groups[key].setdefault(str(types[key]), []).append(float(ok))
    extras: dict[str, Any] = {"n_unbalanced": len(per_sample) - len(balanced)}
    if answer_kind["binary"] or answer_kind["open"]:
        extras.update({k: _gqa_avg_pct(v) for k, v in answer_kind.items()})
        for key, table in groups.items():
            extras[f"per_{key}_type"] = {t: [_gqa_avg_pct(v), len(v)] for t, v in sorted(table.items())}
    return _result("gqa", mode, per_sample, len(balanced), _gqa_avg_pct(balanced), _count_missing(predictions),
                   counted=counted, **extras)


def _exact_or_soft_clean(task: str, i: int, pred: str, ref: dict[str, Any]) -> float:
    """Clean rule for VizWiz / VQAv2: VQA soft accuracy when ten answers are given, otherwise
    normalised exact match with the single answer."""
    answers = _answers(task, i, ref, required_len=None)
    if answers is not None and len(answers) == 10:
        return vqa_soft_accuracy(pred, answers, clean_normalize)
    return float(clean_normalize(pred) == clean_normalize(_answer(task, i, ref)))


def _score_case_insensitive(task: str, predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                            mode: str) -> ScoreResult:
    """``eval_vizwiz.py`` / ``eval_vqav2.py``: ``pred.upper() == answer.upper()`` against the single
    CoIN answer; no VQA soft score, no normalisation."""
    return _score_each(task, predictions, references, mode, lambda pred, answer: pred.upper() == answer.upper(),
                       lambda pred, answer, i, ref: _exact_or_soft_clean(task, i, pred, ref))


def score_vizwiz(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                 mode: str = "official") -> ScoreResult:
    """VizWiz: case-insensitive exact match (``eval_vizwiz.py``)."""
    return _score_case_insensitive("vizwiz", predictions, references, mode)


def score_vqav2(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                mode: str = "official") -> ScoreResult:
    """VQAv2: case-insensitive exact match (``eval_vqav2.py``), not the 10-annotator VQA accuracy."""
    return _score_case_insensitive("vqav2", predictions, references, mode)


def _grounding_reference(task: str, i: int, ref: dict[str, Any]) -> tuple[list[float], list[float]]:
    box_text = _answer(task, i, ref)
    try:
        gt_box = parse_box_string(box_text)
    except ValueError:
        raise _ref_error(task, i, ref, "answer", f"is not a box of four numbers: {box_text!r}") from None
    return gt_box, _size(task, i, ref)


def score_grounding(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                    mode: str = "official") -> ScoreResult:
    """Box accuracy at IoU > 0.5 (``eval_grounding.py``)."""
    return _score_each("grounding", predictions, references, mode,
                       lambda pred, target: grounding_correct_official(pred, *target),
                       lambda pred, target, i, ref: grounding_correct_clean(pred, target[0]),
                       reference=_grounding_reference)


def score_ocrvqa(predictions: Sequence[str | None], references: Sequence[dict[str, Any]],
                 mode: str = "official") -> ScoreResult:
    """OCR-VQA: case-insensitive exact match, "Unanswerable" predictions wrong (``eval_ocrvqa.py``).
    The script's printed "Samples: 0" is a display bug only; the accuracy uses all predictions."""
    return _score_each("ocrvqa", predictions, references, mode, ocrvqa_match_official,
                       lambda pred, answer, i, ref: clean_normalize(pred) == clean_normalize(answer))


def _count_missing(predictions: Sequence[str | None]) -> int:
    return sum(1 for p in predictions if p is None)


# Each task's scorer is declared with the task (its ``scorer`` in :mod:`tasks`); this is the view by name.
SCORERS: Mapping[str, Scorer] = declared.by_task(lambda t: t.scorer)


def score(task: str, predictions: list[str | None], references: list[dict], mode: str = "official") -> ScoreResult:
    """Score ``predictions`` aligned with ``references`` with ``task``'s CoIN rule in ``mode``."""
    if task not in SCORERS:
        raise TaskError(f"unknown task {task!r} for scoring; valid tasks: {', '.join(SCORERS)}")
    if mode not in MODES:
        raise TaskError(f"unknown scoring mode {mode!r}; valid modes: {', '.join(MODES)}")
    if len(predictions) != len(references):
        raise TaskError(f"{task}: {len(predictions)} predictions for {len(references)} references; "
                        "they must be aligned one to one (use None for a missing prediction)")
    if not references:
        raise TaskError(f"{task}: nothing to score (no references)")
    for i, pred in enumerate(predictions):
        if pred is not None and not isinstance(pred, str):
            raise TaskError(f"{task}: prediction {i} must be a string or None, got {type(pred).__name__}")
    for i, ref in enumerate(references):
        if not isinstance(ref, dict):
            raise TaskError(f"{task}: reference {i} must be a dict, got {type(ref).__name__}")
    return SCORERS[task](predictions, references, mode)
