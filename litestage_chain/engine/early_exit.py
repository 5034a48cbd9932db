"""LiteStage's generation early exit: stop a stage when the model's recent confidence collapses.

Layer skipping makes a model ramble: after its useful content it keeps emitting low-confidence tokens. Stopping
when the mean max-softmax confidence of the last `window` tokens falls below `threshold` cuts that tail, which is
where much of the latency of a skipped model goes.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field


class EarlyExitConfig(BaseModel):
    """Stop decoding when mean(confidence of the last `window` tokens) < `threshold`, after `min_tokens` tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(4, ge=1, description="How many of the latest tokens the mean confidence is taken over.")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="Exit when the windowed mean confidence drops below.")
    min_tokens: int = Field(8, ge=0, description="Never exit before this many tokens have been generated.")

    def should_exit(self, confidences: Sequence[float]) -> bool:
        """True when the generation so far (its per-token confidences) should stop here."""
        count = len(confidences)
        if count < max(self.window, self.min_tokens):
            return False
        recent = confidences[count - self.window :]
        return sum(recent) / self.window < self.threshold
