"""Answer extraction and prompt loading: the pieces of the reasoning chain that need no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.reasoning.answer import (
    extract,
    extract_answer,
    extract_correct_option,
)
from litestage_chain.reasoning.prompts import PromptSet, parse_template

MCQ = Question(
    question="Where would you keep milk cold?",
    choices=["cupboard", "refrigerator", "oven", "a tree", "windowsill"],
)
YESNO = Question(question="Can fish fly?", choices=[{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}])


@pytest.mark.parametrize(
    ("text", "label", "rule"),
    [
        ("So the answer is option B.", "B", "answer-option"),
        ("so the answer is option (c)", "C", "answer-option"),
        ("The answer is option A. Wait, no: the answer is option E.", "E", "answer-option"),
        ("Answer: (d)", "D", "answer-paren"),
        ("The answer is B.", "B", "answer-bare"),
        ("**The answer is C**", "C", "answer-bare"),
        ("So the answer is refrigerator.", "B", "answer-text"),
        ("So the answer is a tree.", "D", "answer-text"),
        ("I would pick option E here", "E", "option"),
        ("B is correct. Because it is cold inside.", "B", "is-correct"),
        ("You keep it in the refrigerator", "B", "choice-text"),
    ],
)
def test_extract_mcq(text: str, label: str, rule: str) -> None:
    found = extract(text, MCQ)
    assert (found.label, found.rule) == (label, rule)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "So the answer is option Z.",  # not a label of this question
        "I am not sure.",
        "A is correct. Because ... C is correct. Because ...",  # two options marked correct: ambiguous
        "the refrigerator or the oven",  # two choice texts: ambiguous
    ],
)
def test_extract_mcq_none(text: str) -> None:
    assert extract_answer(text, MCQ) is None


def test_article_a_is_not_option_a() -> None:
    question = Question(question="What grows in a forest?", choices=["sand", "a tree", "glass"])
    assert extract_answer("So the answer is a tree.", question) == "B"
    assert extract_answer("the answer is a mystery", question) is None


@pytest.mark.parametrize(
    ("text", "label"),
    [("So the answer is option B.", "B"), ("No, fish cannot fly.", "B"), ("Yes.", "A"), ("yes and no", None)],
)
def test_extract_yes_no(text: str, label: str | None) -> None:
    assert extract_answer(text, YESNO) == label


def test_extract_correct_option_requires_exactly_one() -> None:
    analysis = "A is incorrect. Because x.\nB is correct. Because y.\nC is incorrect. Because z."
    assert extract_correct_option(analysis, MCQ) == "B"
    assert extract_correct_option("A is incorrect. B is incorrect.", MCQ) is None


def test_question_coercion_and_errors() -> None:
    row = {"id": "q1", "question": "Q?", "choices": [{"label": "a", "text": "x"}, {"label": "b", "text": "y"}], "answer": "B"}
    question = Question.coerce(row)
    assert question.labels == ["A", "B"] and question.options_text == "A. x, B. y" and question.kind == "mcq"
    assert YESNO.kind == "yesno"
    assert Question.coerce({"question": "Q?", "choices": {"A": "x", "B": "y"}}).text_of("B") == "y"
    with pytest.raises(InvalidInputError, match="at least 2 choices"):
        Question.coerce({"question": "Q?", "choices": ["only one"]})
    with pytest.raises(InvalidInputError, match="question text is empty"):
        Question.coerce({"question": "  ", "choices": ["x", "y"]})
    with pytest.raises(InvalidInputError, match="unique"):
        Question.coerce({"question": "Q?", "choices": [{"label": "A", "text": "x"}, {"label": "A", "text": "y"}]})
    with pytest.raises(InvalidInputError, match="not among the choice labels"):
        Question.coerce({"question": "Q?", "choices": ["x", "y"], "answer": "C"})
    with pytest.raises(InvalidInputError, match="mapping"):
        Question.coerce("just a string")


def test_shipped_prompts_load_and_render() -> None:
    prompts = PromptSet.load()
    for kind in ("mcq", "yesno"):
        assert len(prompts.exemplars[kind]) >= 4
        for exemplar in prompts.exemplars[kind]:
            labels = [c.label for c in exemplar.choices]
            assert exemplar.answer in labels and len(exemplar.explanations) == len(labels)
            # Each exemplar's analysis marks exactly its own answer as correct.
            assert extract_correct_option("\n".join(exemplar.explanations), exemplar.as_question()) == exemplar.answer
        for stage in ("recall", "analysis", "summary"):
            prompt = prompts.chat_prompt(kind, stage, num_shots=2)
            messages = prompt.format_messages(
                question="Q {with braces}?", options="A. x, B. y", key_information="K", explanations="E"
            )
            assert messages[0].type == "system" and len(messages) == 1 + 2 * 2 + 1
            assert "Q {with braces}?" in messages[-1].content
    summary = prompts.chat_prompt("mcq", "summary", num_shots=1).format_messages(
        question="Q", options="O", key_information="K", explanations="E"
    )
    # The worked example's summary turn is exactly the line the extractor reads.
    assert summary[2].content == f"So the answer is option {prompts.exemplars['mcq'][0].answer}."
    available = len(prompts.exemplars["mcq"])
    assert len(prompts.chat_prompt("mcq", "recall", num_shots=available).messages) == 2 + 2 * available
    with pytest.raises(InvalidInputError, match=f"num_shots={available + 1} but the prompts hold only {available}"):
        prompts.chat_prompt("mcq", "recall", num_shots=available + 1)


def test_prompt_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        PromptSet.load(tmp_path / "nope")
    (tmp_path / "mcq").mkdir()
    with pytest.raises(InvalidInputError, match="missing prompt template"):
        PromptSet.load(tmp_path)
    with pytest.raises(InvalidInputError, match="missing section"):
        parse_template("[system]\nx\n[user]\ny\n")
    with pytest.raises(InvalidInputError, match="before the first"):
        parse_template("stray\n[system]\nx\n[user]\ny\n[assistant]\nz\n")
    assert parse_template("# c\n[system]\nS\n[user]\nU {question}\n[assistant]\nA\n").user == "U {question}"
