"""What `litestage ask` and `litestage demo` print: streamed stages, the answer line and the per-stage timing table."""

from __future__ import annotations

import logging
from typing import Any, TextIO
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from litestage_chain.budgets.stages import STAGES


def answer_line(result: Any) -> str:
    """The chosen option, its text and where it was read, e.g. "B (in the cupboard)"."""
    answer = f"{result.answer} ({result.answer_text})" if result.answer else "none could be read"
    note = {"fallback": ", from the full-model summary re-run", "analysis": ", from the analysis"}.get(
        result.answer_source or "", ""
    )
    return answer + note


def timing_table(result: Any) -> str:
    """Per-stage tokens, seconds and skipped sub-layers, as a fixed-width table."""
    rows = [(stage, result.stages[stage]) for stage in STAGES]
    if result.fallback is not None:
        rows.append(("summary*", result.fallback))
    lines = [
        f"{'stage':<10}{'tokens':>8}{'prefilled':>10}{'reused':>8}{'prefill s':>11}{'decode s':>10}{'total s':>9}  "
        f"{'exit':<6}skipped sub-layers"
    ]
    for name, output in rows:
        lines.append(
            f"{name:<10}{output.generated_tokens:>8}{output.prefilled_tokens:>10}{output.reused_tokens:>8}"
            f"{output.prefill_seconds:>11.2f}{output.decode_seconds:>10.2f}"
            f"{output.seconds:>9.2f}  {'early' if output.early_exited else '-':<6}{output.skipped.describe()}"
        )
    lines.append(
        f"{'total':<10}{result.generated_tokens:>8}{'':>10}{'':>8}{'':>11}{'':>10}{result.model_seconds:>9.2f}"
        f"  (wall {result.total_seconds:.2f} s)"
    )
    lines.append("prefilled / reused: prompt tokens the stage computed / found cached from earlier calls")
    if result.fallback is not None:
        lines.append("summary* = the summary re-run on the full model because no answer could be read")
    return "\n".join(lines) + "\n"


class StagePrinter(BaseCallbackHandler):
    """Prints a header when a stage's model call starts and each decoded piece as it arrives."""

    raise_error = True
    """A failed write (the reader of a pipe went away) stops the run instead of being logged once per token."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self._printed_any = False

    def quiet_own_errors(self, record: logging.LogRecord) -> bool:
        """LangChain logs a handler's error before raising it; the CLI reports a closed output itself."""
        return f"{type(self).__name__}." not in record.getMessage()

    def header(self, title: str) -> None:
        self.out.write(("\n\n" if self._printed_any else "\n") + f"[{title}]\n")
        self._printed_any = True
        self.out.flush()

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        metadata = metadata or {}
        stage = metadata.get("litestage_stage")
        if stage:
            fallback = metadata.get("litestage_node") == "summary_fallback"
            self.header(f"{stage} (full model)" if fallback else stage)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.out.write(token)
        self.out.flush()
