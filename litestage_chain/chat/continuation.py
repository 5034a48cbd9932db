"""Prompts as segments, each with the skip plan its tokens are computed under (shared-context stages).

In the shared-context format the stages are consecutive segments of one assistant turn: stage s+1's prompt is stage
s's prompt + output + the next stage's header. A stage call receives that turn so far as a trailing `AIMessage`
that the reply *continues* (an assistant prefill), whose `additional_kwargs["litestage_segments"]` lists its pieces
with the plan each was computed under (an earlier stage's `StageOutput.skipped`; `None` for this call's own header).
The chat model renders the rest of the conversation, appends the pieces and encodes every piece on its own, so
stage s+1's prompt tokens start with exactly stage s's prompt tokens (a whole-text encoding could merge tokens across
a boundary) and the context cache finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from langchain_core.messages import AIMessage, BaseMessage

from litestage_chain.errors import InvalidInputError
from litestage_chain.engine.skip_plan import SkipPlan

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel

SEGMENTS_KEY = "litestage_segments"
Segment = tuple[str, Optional[SkipPlan]]  # text, and the plan it was computed under (None: the call's own plan)


def continuation_message(segments: Sequence[Segment]) -> AIMessage:
    """The trailing assistant message a shared-context stage sends: the turn so far, piece by piece."""
    return AIMessage(
        content="".join(text for text, _ in segments),
        additional_kwargs={
            SEGMENTS_KEY: [
                {"text": text, "skipped": None if plan is None else plan.model_dump(mode="json")}
                for text, plan in segments
            ]
        },
    )


def split_continuation(messages: Sequence[BaseMessage]) -> tuple[list[BaseMessage], list[Segment] | None]:
    """The messages before a trailing continuation message, and its segments (None when there is none)."""
    last = messages[-1] if messages else None
    if not isinstance(last, AIMessage) or SEGMENTS_KEY not in last.additional_kwargs:
        return list(messages), None
    raw = last.additional_kwargs[SEGMENTS_KEY]
    segments: list[Segment] = []
    try:
        for item in raw:
            skipped = item.get("skipped")
            segments.append((str(item["text"]), None if skipped is None else SkipPlan.model_validate(skipped)))
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise InvalidInputError(
            f"{SEGMENTS_KEY} must be a list of {{'text': str, 'skipped': plan or None}}: {exc}"
        ) from exc
    if not segments or "".join(text for text, _ in segments) != last.content:
        raise InvalidInputError(f"the continuation message's content must be the concatenation of its {SEGMENTS_KEY}")
    if len(messages) < 2:
        raise InvalidInputError("a continuation message needs the conversation it continues before it")
    return list(messages[:-1]), segments


def prompt_segments(
    prompt: str, shared_prefix: str | None, continuation: Sequence[Segment] | None, reply_prefix: str, plan: SkipPlan
) -> tuple[tuple[str, SkipPlan], ...]:
    """The whole prompt as (text, plan) pieces: the rendered conversation (split after `shared_prefix`, so that
    prefix is a token prefix), the continuation's pieces and the reply's forced start.

    The rendered conversation was computed with the continuation's first piece (the first stage ran it).
    """
    pieces = list(continuation or [])
    first = (pieces[0][1] if pieces else None) or plan
    head = [prompt]
    if shared_prefix and prompt.startswith(shared_prefix) and len(prompt) > len(shared_prefix):
        head = [shared_prefix, prompt[len(shared_prefix) :]]
    segments = [(text, first) for text in head] + [(text, segment_plan or plan) for text, segment_plan in pieces]
    if reply_prefix:
        segments.append((reply_prefix, plan))
    return tuple((text, segment_plan) for text, segment_plan in segments if text)


def encode_segments(
    loaded: "LoadedModel", segments: Sequence[tuple[str, SkipPlan]]
) -> tuple[list[int], list[tuple[int, SkipPlan]]]:
    """Token ids of the pieces encoded one by one, and the runs of (token count, plan) they form."""
    ids: list[int] = []
    runs: list[tuple[int, SkipPlan]] = []
    for text, plan in segments:
        tokens = loaded.encode(text)
        ids.extend(tokens)
        if runs and runs[-1][1] == plan:
            runs[-1] = (runs[-1][0] + len(tokens), plan)
        elif tokens:
            runs.append((len(tokens), plan))
    return ids, runs

