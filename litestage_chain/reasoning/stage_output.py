"""`StageOutput`: what one reasoning stage produced and what it cost, read off the chat model's reply."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.budgets.stages import Stage
from litestage_chain.engine.skip_plan import SkipPlan

State = dict[str, Any]
"""A chain's state between stages: `question` (a `Question`) and each finished stage's `StageOutput` by name."""


class StageOutput(BaseModel):
    """What one stage produced and what it cost: the record the chain keeps and the offline search reads."""

    model_config = ConfigDict(frozen=True)

    stage: Stage
    text: str
    prompt_tokens: int
    generated_tokens: int
    seconds: float = Field(description="prefill + decode seconds of this stage's generation")
    prefill_seconds: float
    decode_seconds: float
    skipped: SkipPlan
    early_exited: bool
    finish_reason: str
    # Two counts of "tokens not prefilled here" that differ on purpose. `prefix_tokens` is about the *time* reported:
    # the shared few-shot prefix is loaded from a table and its cost (if this call computed it first) is kept out of
    # `prefill_seconds`, so the cost model charges only the rest. `reused_tokens` is about the *work* saved: it
    # counts only entries an earlier call computed, so a call that fills the table itself reports 0 there.
    reused_tokens: int = Field(0, description="prompt tokens whose KV entries an earlier call had computed (work this "
                               "call did not do); prompt_tokens - reused_tokens = prefilled_tokens")
    prefilled_tokens: int = Field(0, description="prompt tokens this stage's call prefilled")
    prefix_tokens: int = Field(0, ge=0, description="prompt tokens whose KV entries came from the shared-prefix table "
                               "instead of this call's prefill seconds, whoever computed them (the cost model charges "
                               "only the rest); equals reused_tokens except on the call that first fills the table")

    @classmethod
    def from_message(cls, stage: Stage, message: Any) -> StageOutput:
        """Read a stage's record off the `AIMessage` `ChatLiteStage` returned for it."""
        meta = message.response_metadata
        usage = message.usage_metadata or {}
        skipped = meta.get("skipped") or {}
        return cls(
            stage=stage,
            text=clean_stage_text(stage, message.text),
            prompt_tokens=int(usage.get("input_tokens", 0)),
            generated_tokens=int(usage.get("output_tokens", 0)),
            seconds=float(meta.get("prefill_seconds", 0.0)) + float(meta.get("decode_seconds", 0.0)),
            prefill_seconds=float(meta.get("prefill_seconds", 0.0)),
            decode_seconds=float(meta.get("decode_seconds", 0.0)),
            skipped=SkipPlan(attention=skipped.get("attention", ()), mlp=skipped.get("mlp", ())),
            early_exited=bool(meta.get("early_exit", False)),
            finish_reason=str(meta.get("finish_reason", "")),
            reused_tokens=int(meta.get("reused_tokens", 0)),
            prefilled_tokens=int(meta.get("prefilled_tokens", usage.get("input_tokens", 0))),
            prefix_tokens=sum(int(v or 0) for v in (usage.get("input_token_details") or {}).values()),
        )


_LEADS = {"recall": ("key information:", "key knowledge:"), "analysis": ("analysis:",), "summary": ()}


def clean_stage_text(stage: Stage, text: str) -> str:
    """Strip whitespace and a leading echo of the stage's label ("Key information: ...") the model may write."""
    cleaned = text.strip()
    for lead in _LEADS[stage]:
        if cleaned.lower().startswith(lead):
            cleaned = cleaned[len(lead) :].strip()
    return cleaned
