"""Answer extraction: read the chosen option label out of free model text.

Small models, and layer-skipped models even more, rarely produce the summary line exactly as instructed. The
extractor therefore tries a ladder of increasingly loose readings and stops at the first one that names exactly
one valid label; when nothing unambiguous is found it returns `None`, so the chain's fallback policy (re-run the
summary on the full model) can kick in instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from litestage_chain.data.types import Question

# "the answer is option B", "answer is (b)", "Answer: B." -- the instructed form, most trusted; last one wins.
_ANSWER_OPTION = re.compile(r"answer\s*(?:is|:)?\s*:?\s*option\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE)
_ANSWER_PAREN = re.compile(r"answer\s*(?:is|:)\s*:?\s*\(([A-Za-z])\)", re.IGNORECASE)
# A bare capital after "answer is": "The answer is B." (lowercase is excluded: "the answer is a tree").
_ANSWER_BARE = re.compile(r"answer\s*(?:is|:)\s*:?\s*\**([A-Z])\**(?=[\s.,;:)!]|$)", re.IGNORECASE)
_OPTION_ANY = re.compile(r"\boption\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE)
_IS_CORRECT = re.compile(r"(?:^|[\s(*])([A-Z])\)?\.?\s*(?:is|are)\s+(?:the\s+)?correct\b")
_ANSWER_IS_TEXT = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    """The extracted label and which rule found it (kept for debugging the prompts, e.g. in the CLI)."""

    label: str | None
    rule: str | None


def extract_answer(text: str, question: Question) -> str | None:
    """The option label `text` settles on, or `None` if no single valid label can be read."""
    return extract(text, question).label


def extract(text: str, question: Question) -> Extraction:
    """Like `extract_answer`, but also says which rule matched."""
    labels = question.labels
    rules: list[tuple[str, Callable[[str, Question], str | None]]] = [
        ("answer-option", lambda t, q: _last_valid(_ANSWER_OPTION, t, labels, upper=True)),
        ("answer-paren", lambda t, q: _last_valid(_ANSWER_PAREN, t, labels, upper=True)),
        ("answer-bare", lambda t, q: _last_valid_bare(t, labels)),
        ("answer-text", _answer_is_choice_text),
        ("option", lambda t, q: _last_valid(_OPTION_ANY, t, labels, upper=True)),
        ("is-correct", lambda t, q: extract_correct_option(t, q)),
        ("yes-no", _yes_no),
        ("choice-text", _single_choice_text),
    ]
    cleaned = text.replace("**", "").strip()
    if not cleaned:
        return Extraction(None, None)
    for name, rule in rules:
        label = rule(cleaned, question)
        if label is not None:
            return Extraction(label, name)
    return Extraction(None, None)


def extract_correct_option(text: str, question: Question) -> str | None:
    """The single label an analysis marks as correct ("C is correct. Because ..."), or `None` if zero or several."""
    found = {m.group(1) for m in _IS_CORRECT.finditer(text)} & set(question.labels)
    return found.pop() if len(found) == 1 else None


def _last_valid(pattern: re.Pattern[str], text: str, labels: Sequence[str], *, upper: bool) -> str | None:
    for match in reversed(list(pattern.finditer(text))):
        label = match.group(1).upper() if upper else match.group(1)
        if label in labels:
            return label
    return None


def _last_valid_bare(text: str, labels: Sequence[str]) -> str | None:
    for match in reversed(list(_ANSWER_BARE.finditer(text))):
        letter = match.group(1)
        # A lone lowercase "a" after "answer is" is the article ("the answer is a tree"), not option A.
        if letter.islower():
            continue
        if letter in labels:
            return letter
    return None


def _answer_is_choice_text(text: str, question: Question) -> str | None:
    """"The answer is refrigerator." -> the label whose text follows "answer is" (longest match wins)."""
    for match in reversed(list(_ANSWER_IS_TEXT.finditer(text))):
        tail = _normalise(match.group(1))
        best: tuple[int, str] | None = None
        for choice in question.choices:
            choice_text = _normalise(choice.text)
            if choice_text and re.match(rf"(?:(?:the|an|a)\s+)?{re.escape(choice_text)}\b", tail):
                if best is None or len(choice_text) > best[0]:
                    best = (len(choice_text), choice.label)
        if best is not None:
            return best[1]
    return None


def _yes_no(text: str, question: Question) -> str | None:
    if question.kind != "yesno":
        return None
    words = set(re.findall(r"\b(yes|no)\b", text.lower()))
    if len(words) != 1:
        return None
    word = words.pop()
    for choice in question.choices:
        if choice.text.strip().lower() == word:
            return choice.label
    return None


def _single_choice_text(text: str, question: Question) -> str | None:
    """If exactly one choice's text appears in `text`, that choice (a last resort for terse summaries)."""
    haystack = _normalise(text)
    hits = [
        c.label
        for c in question.choices
        if _normalise(c.text) and re.search(rf"\b{re.escape(_normalise(c.text))}\b", haystack)
    ]
    return hits[0] if len(hits) == 1 else None


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()
