"""Calibration texts for sub-layer importance, built by running the full model through the reasoning chain.

Each stage is measured on what the model actually processes in that stage: the stage's prompt (the
question plus the full model's outputs of the earlier stages) followed by the full model's own output
for the stage, so both the prefill and the generated part of the stage are represented.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestage_chain.budgets.stages import STAGES
from litestage_chain.data.types import Question
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.evaluator import ChainEvaluator


def calibration_prompts(
    evaluator: ChainEvaluator, questions: Sequence[Question], *, include_output: bool = True
) -> dict[str, list[str]]:
    """Per stage, one text per question: the stage prompt, plus the stage's full-model output if `include_output`.

    Runs through `evaluator`, so the full-model outputs are cached and reused by the search's baseline.
    """
    if not questions:
        raise InvalidInputError("calibration needs at least one question")
    states = evaluator.run_stages({stage: SkipPlan() for stage in STAGES}, questions)
    return {
        stage: [evaluator.render_prompt(stage, state) + (state[stage].text if include_output else "") for state in states]
        for stage in STAGES
    }
