"""Grade a model's free-text answer against gold answers: strict, whole-word, echo-aware.

Three answer kinds:

* ``alias``: any gold alias occurs in the response as whole words, after normalisation (case, accents,
  punctuation, articles, whitespace). Numeric aliases also match numbers written in words.
* ``number``: the *final* number in the response (digits with thousands separators, decimals, or words)
  equals a gold number.
* ``yesno``: the first ``yes``/``no`` (or ``true``/``false``) in the response equals the gold one.

**The first sentence is the answer.** Chat models answer in sentences and then keep talking; a gold
alias that appears only after the first sentence ("carbon dioxide ... other gases, such as nitrogen") is
not the answer the model gave. Alias and yes/no answers are graded on the first sentence or line; numbers
on the whole response (reasoning ends with its result).

**Echoes are not answers.** Small models often repeat the question. When a gold alias already appears in
the question, its repetition proves nothing, so it is not counted, except in a choice question
("A or B?") where the options are legitimate answers, and there only when the response does not copy the
choice itself. For numbers, a final number that sits in a stretch copied from the question does not count.
:func:`grade` reports whether such an echo was discounted.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

ARTICLES = {"a", "an", "the"}


_SMALL = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}


_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


_YES = {"yes": "yes", "true": "yes", "correct": "yes", "no": "no", "false": "no", "not": None}


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Normalised word tokens: lower case, no accents, punctuation dropped, articles removed.

    Thousands separators inside numbers are removed (``3,400`` -> ``3400``), decimals are kept
    (``2.5``), and apostrophes join (``don't`` -> ``dont``).
    """
    s = _strip_accents(text).lower()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"[\u2018\u2019'`]", "", s)
    s = re.sub(r"(?<=\d)\.(?=\d)", "\0", s)  # protect decimal points
    s = re.sub(r"[^\w\0]+", " ", s).replace("_", " ").replace("\0", ".")
    return [t for t in s.split() if t not in ARTICLES]


def normalize(text: str) -> str:
    """:func:`tokens` joined by single spaces."""
    return " ".join(tokens(text))


def _find(hay: list[str], needle: list[str]) -> list[int]:
    n = len(needle)
    return [i for i in range(len(hay) - n + 1) if hay[i:i + n] == needle] if n else []


def _parse_number_words(words: list[str]) -> float | None:
    total, current, seen = 0, 0, False
    for w in words:
        if w in _SMALL:
            current += _SMALL[w]
            seen = True
        elif w in _SCALES:
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, 0
            seen = True
        elif w == "and" and seen:
            continue
        else:
            return None
    return float(total + current) if seen else None


_NEG = "negsign"


def _number_tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s-]+", normalize(text)) if t]


def numbers(text: str) -> list[tuple[float, int, int]]:
    """Numbers in ``text`` as ``(value, start, end)`` token spans of :func:`tokens` (digits or words)."""
    text = re.sub(r"(?<![\w.])-(?=\d)", f" {_NEG} ", text)
    toks = _number_tokens(text)
    out: list[tuple[float, int, int]] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(st|nd|rd|th|s|m|k|am|pm)?", t)
        if m:
            sign = -1.0 if i > 0 and toks[i - 1] == _NEG else 1.0
            out.append((sign * float(m.group(1)), i, i + 1))
            i += 1
            continue
        if t in _SMALL or t in _SCALES:
            j = i
            while j < len(toks) and (toks[j] in _SMALL or toks[j] in _SCALES or (toks[j] == "and" and j > i)):
                j += 1
            while j > i and toks[j - 1] == "and":
                j -= 1
            val = _parse_number_words(toks[i:j])
            if val is not None:
                out.append((val, i, j))
                i = j
                continue
        i += 1
    return out


def parse_number(text: str) -> float | None:
    """The value of ``text`` if it is a single number (``"1,945"``, ``"twenty-one"``, ``"-3.5"``), else None."""
    t = text.strip().replace("$", "").replace("%", "")
    found = numbers(t)
    if len(found) != 1:
        return None
    v, s, e = found[0]
    n_toks = len(_number_tokens(t.lstrip("-")))
    return v if (s, e - s) in ((0, n_toks), (1, n_toks)) else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def is_choice_question(question: str | None) -> bool:
    """A question that offers its own options ("... A or B?")."""
    return bool(question) and re.search(r"\w\W*\s+or\s+\W*\w", question, flags=re.I) is not None


def choice_options(question: str) -> list[list[str]]:
    """The options of a choice question, as token lists: the phrases on either side of each "or",
    bounded by commas, colons, semicolons and the question mark."""
    out = []
    for seg in re.split(r"[,;:?]", question):
        parts = re.split(r"\s+or\s+", seg.strip(), flags=re.I)
        if len(parts) > 1:
            out.extend(tokens(p) for p in parts if tokens(p))
    return out


def _copied_mask(resp: list[str], q: list[str], min_len: int) -> list[bool]:
    """Mark response tokens inside runs of >= ``min_len`` tokens that occur contiguously in the question."""
    mask = [False] * len(resp)
    qgrams = {tuple(q[i:i + min_len]) for i in range(len(q) - min_len + 1)}
    for i in range(len(resp) - min_len + 1):
        if tuple(resp[i:i + min_len]) in qgrams:
            for j in range(i, i + min_len):
                mask[j] = True
    return mask


_ABBREV = re.compile(r"(?:\b[A-Z][a-z]{0,2}|\b[A-Z]|\b(?:approx|vs|etc|no|ca))\.$")


def answer_span(response: str) -> str:
    """The first sentence or line of ``response`` (abbreviations such as "St." or "D.C." do not end it)."""
    text = response.strip().split("\n", 1)[0]
    for m in re.finditer(r"[.!?](?=\s+[\"'(\[]?[A-Z0-9])", text):
        head = text[: m.end()]
        if m.group() == "." and _ABBREV.search(head):
            continue
        return head
    return text


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one response.

    Attributes:
        correct: the response gives a gold answer.
        echo_discounted: a gold answer was found only as a repeat of the question, and not counted.
        matched: the gold answer (or number) that made it correct, if any.
    """

    correct: bool
    echo_discounted: bool = False
    matched: str | None = None


def _grade_alias(resp: list[str], answers: list[str], question: str | None) -> Grade:
    q = tokens(question or "")
    choice = is_choice_question(question)
    options = choice_options(question) if choice else []
    echoed = False
    resp_nums = None
    for ans in answers:
        a = tokens(ans)
        if not a:
            continue
        hits = _find(resp, a)
        num = parse_number(ans)
        if not hits and num is not None:  # "8" also matches "eight", "1,945" matches "1945"
            resp_nums = resp_nums if resp_nums is not None else numbers(" ".join(resp))
            hits = [s for v, s, e in resp_nums if _close(v, num)]
            alen = 1
        else:
            alen = len(a)
        if not hits:
            continue
        in_q = _find(q, a)
        if not in_q:
            return Grade(True, False, ans)
        # The alias is in the question: its repetition is an echo unless it is one of the options of a
        # choice question ("A or B") and the response names it without copying the question around it.
        if choice and any(_find(opt, a) for opt in options):
            for h in hits:
                left = resp[max(0, h - 1):h + alen]
                right = resp[h:h + alen + 1]
                copied = any(len(w) > alen and _find(q, w) and not any(_find(opt, w) for opt in options)
                             for w in (left, right))
                if not copied:
                    return Grade(True, False, ans)
        echoed = True
    return Grade(False, echoed, None)


def _grade_number(response: str, answers: list[str], question: str | None) -> Grade:
    golds = [v for v in (parse_number(a) for a in answers) if v is not None]
    found = numbers(response)
    if not found or not golds:
        return Grade(False)
    value, start, end = found[-1]
    if not any(_close(value, g) for g in golds):
        return Grade(False)
    if question:
        resp_toks = _number_tokens(re.sub(r"(?<![\w.])-(?=\d)", f" {_NEG} ", response))
        mask = _copied_mask(resp_toks, _number_tokens(question), 3)
        if any(mask[start:end]) and sum(mask) >= 0.6 * len(mask):
            return Grade(False, True, None)
    return Grade(True, False, str(value))


def _grade_yesno(resp: list[str], answers: list[str]) -> Grade:
    gold = {_YES.get(normalize(a)) for a in answers} - {None}
    for t in resp:
        if t in ("yes", "true", "no", "false"):
            said = _YES[t]
            return Grade(said in gold, False, said if said in gold else None)
    return Grade(False)


def grade(response: str, answers: list[str], kind: str = "alias", question: str | None = None) -> Grade:
    """Grade ``response`` against gold ``answers``; see the module doc for the rules.

    Args:
        response: the model's answer text.
        answers: gold answers (aliases, numbers as text, or ``yes``/``no``).
        kind: ``alias``, ``number`` or ``yesno``.
        question: the question, used to discount echoes (recommended).
    """
    if kind not in ("alias", "number", "yesno"):
        raise ValueError(f"unknown answer kind {kind!r} (alias, number or yesno)")
    if not response or not response.strip():
        return Grade(False)
    if kind == "number":
        return _grade_number(response, answers, question)
    resp = tokens(answer_span(response))
    if kind == "yesno":
        return _grade_yesno(resp, answers)
    return _grade_alias(resp, answers, question)


def is_correct(response: str, answers: list[str], kind: str = "alias", question: str | None = None) -> bool:
    """Whether ``response`` gives one of the gold ``answers`` (see :func:`grade`)."""
    return grade(response, answers, kind, question).correct
