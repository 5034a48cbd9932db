"""Choosing among a few fixed continuations by the model's own likelihood, instead of free generation.

Guided replies sometimes need the model to pick from a closed set: a bound tool's name, an enum value, whether a
list goes on (`,`) or ends (`]`), whether a nullable value is `null`. Letting a 135M model generate freely there
produces names of tools that do not exist or values outside the enum; scoring each option's tokens after the prompt
and taking the most likely one keeps the answer inside the set by construction, and is still the model's choice.

The prompt's KV entries come from a prefix table (the guided call's own one), so each option costs one forward
pass over the few tokens written since that prefix plus the option, not over the whole prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch

from litestage_chain.engine.forward import new_cache, run_layers
from litestage_chain.engine.prefix_cache import PrefixCache, load_prefix
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel


def option_log_probs(
    model: "LoadedModel",
    prompt: str,
    options: Sequence[str],
    plan: SkipPlan,
    *,
    shared_prefix: Optional[str] = None,
    prefix_cache: Optional[PrefixCache] = None,
) -> list[float]:
    """Total log-probability of each option's tokens right after `prompt`, under `plan`.

    `shared_prefix` (a beginning of `prompt`) has its KV entries looked up in `prefix_cache` (default: the model's
    table) instead of being recomputed for every option.
    """
    if not options or any(not option for option in options):
        raise InvalidInputError("options must be a non-empty list of non-empty strings")
    prompt_ids = model.encode(prompt)
    prefix_ids: list[int] = []
    if shared_prefix:
        candidate = model.encode(shared_prefix)
        if len(candidate) < len(prompt_ids) and prompt_ids[: len(candidate)] == candidate:
            prefix_ids = candidate
    table = model.prefix_cache if prefix_cache is None else prefix_cache
    view = model.view
    scores: list[float] = []
    with torch.inference_mode():
        entry = table.lookup(view, plan, prefix_ids).entry if prefix_ids else None
        for option in options:
            option_ids = model.encode(option)
            ids = prompt_ids + option_ids
            if len(ids) > model.max_positions:
                raise InvalidInputError(
                    f"prompt of {len(ids)} tokens does not fit the model's context of {model.max_positions} tokens"
                )
            start = len(prefix_ids)
            cache = new_cache(view, plan, 1, len(ids), torch.device("cpu"))
            if entry is not None:
                load_prefix(cache, entry)
            rest = torch.tensor(ids[start:], dtype=torch.long)[None, :]
            positions = torch.arange(start, len(ids))[None, :]
            hidden = run_layers(view, view.embed(rest), positions, cache, start, None, plan)
            # logits at position t predict token t + 1: the option's tokens are predicted by the positions before them
            first = len(prompt_ids) - start - 1
            logits = view.lm_head(view.final_norm(hidden[:, first:-1]))[0].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            targets = torch.tensor(option_ids, dtype=torch.long)
            scores.append(float(log_probs.gather(-1, targets[:, None]).sum()))
    return scores


def choose_option(
    model: "LoadedModel", prompt: str, options: Sequence[str], plan: SkipPlan, **prefix: Any
) -> int:
    """Index of the option the model finds most likely after `prompt` (ties: the first); `prefix` as for
    `option_log_probs` (`shared_prefix`, `prefix_cache`)."""
    if len(options) == 1:
        return 0
    scores = option_log_probs(model, prompt, options, plan, **prefix)
    return max(range(len(options)), key=lambda i: (scores[i], -i))
