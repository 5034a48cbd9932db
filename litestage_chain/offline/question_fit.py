"""Which questions a run can answer at all: every stage's prompt must fit the model's context.

Why: a search or a benchmark runs hundreds of questions in batches; one question too long for the context used to
abort the whole run (and every re-run) with an error that did not say which question it was. Checked up front, such
a question is named and left out, and the run goes on with the others. The check is an upper bound: a stage's
prompt is rendered with empty earlier outputs (in every reasoning format), then charged the full token budgets of
the stages it quotes and its own, so a question that passes can never overflow, whatever the model writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from litestage_chain.budgets.stages import STAGES, Stage
from litestage_chain.data.types import Question
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.reasoning.stage_output import StageOutput, State

#: Slack for text re-tokenised inside the next stage's prompt (token boundaries can shift at the joins).
_JOIN_SLACK = 8


def unfit_reason(evaluator: ChainEvaluator, question: Question) -> str | None:
    """Why `question` cannot run through every stage within the context, or ``None`` if it can."""
    model = evaluator.model
    state: State = {"question": question}
    quoted = 0  # tokens of earlier stages' outputs that this stage's prompt may quote
    for stage in STAGES:
        prompt = model.count_tokens(evaluator.render_prompt(stage, state))
        needed = prompt + quoted + evaluator.max_tokens[stage]
        if needed > model.max_positions:
            return (f"its {stage} prompt ({prompt} tokens, {quoted} more for earlier stages' outputs) and "
                    f"{evaluator.max_tokens[stage]} new tokens exceed the model's context of {model.max_positions}")
        quoted += evaluator.max_tokens[stage] + _JOIN_SLACK
        state = {**state, stage: _empty_output(stage)}  # the continued summary renders the analysis's turn from it
    return None


def _empty_output(stage: Stage) -> StageOutput:
    """A stage that wrote nothing: what the later stages' prompts are rendered with (its budget is charged apart)."""
    return StageOutput(stage=stage, text="", prompt_tokens=0, generated_tokens=0, seconds=0.0, prefill_seconds=0.0,
                       decode_seconds=0.0, skipped=SkipPlan(), early_exited=False, finish_reason="stop")


def fitting_questions(
    evaluator: ChainEvaluator, questions: Sequence[Question]
) -> tuple[list[Question], dict[str, str]]:
    """The questions that fit (in order) and, by id, why each of the others was left out (also warned once)."""
    kept: list[Question] = []
    skipped: dict[str, str] = {}
    for question in questions:
        reason = unfit_reason(evaluator, question)
        if reason is None:
            kept.append(question)
        else:
            skipped[question.id] = reason
    if skipped:
        named = "; ".join(f"{qid}: {why}" for qid, why in list(skipped.items())[:5])
        warnings.warn(
            f"skipping {len(skipped)} of {len(questions)} question(s) that do not fit the model's context ({named}"
            f"{'; ...' if len(skipped) > 5 else ''})",
            stacklevel=2,
        )
    return kept, skipped
