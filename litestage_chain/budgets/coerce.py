"""`as_stage_budgets`: the one place where what a user passes as per-stage budgets becomes `StageBudgets`.

The chat model's `stage_profile`/`profile`, the chain's `plans` and the CLI's `--profile` all accept the same things
and call this once: `None`; `StageBudgets`; a searched `Profile`; a profile file or shipped name (`"csqa"`); a JSON file
of plain plans (`{"recall": {"attention": [...], "mlp": [...]}, ...}`); a mapping stage -> `SkipPlan`; or any object
with `plan_for(stage)` and `early_exit_for(stage)`. Unknown stage names are rejected here, with the valid names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from litestage_chain.budgets.profile import Profile
from litestage_chain.budgets.stage_budgets import StageBudget, StageBudgets
from litestage_chain.budgets.stages import STAGES, Stage
from litestage_chain.errors import InvalidInputError, LiteStageError, ProfileError


def as_stage_budgets(value: Any, model: str | None = None) -> StageBudgets | None:
    """Coerce a user's per-stage budgets into `StageBudgets` (or `None`); see the module docstring.

    A shipped profile's name is looked up among `model`'s shipped profiles when a model name is given.
    """
    if value is None or isinstance(value, StageBudgets):
        return value
    if isinstance(value, Profile):
        return value.budgets()
    if isinstance(value, (str, os.PathLike)):
        return _from_file_or_name(value, model)
    if isinstance(value, Mapping):
        return StageBudgets.from_plans(dict(value))
    if callable(getattr(value, "plan_for", None)) and callable(getattr(value, "early_exit_for", None)):
        return _from_object(value)
    raise InvalidInputError(
        f"a stage profile must be a mapping stage -> SkipPlan, a Profile, a profile file or shipped name, or an "
        f"object with plan_for()/early_exit_for(), got {type(value).__name__}"
    )


def _from_file_or_name(source: str | os.PathLike[str], model: str | None = None) -> StageBudgets:
    """A searched profile (file or `model`'s shipped name), else a JSON file of plain per-stage plans."""
    try:
        return Profile.load(source, model=model).budgets()
    except ProfileError as profile_error:
        path = Path(source)
        if not path.is_file():
            raise
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, nesting too deep: the profile's error says which
            raise profile_error from None
        if not isinstance(data, dict) or not data or not set(data) <= set(STAGES):
            raise profile_error from None
        try:
            return StageBudgets.from_plans(data)
        except ValueError as exc:
            raise InvalidInputError(f"{path}: {exc}") from exc


def _from_object(value: Any) -> StageBudgets:
    """Read each stage's plan and early exit off a duck-typed budget object (stages it lacks stay missing)."""
    stages: dict[Stage, StageBudget] = {}
    for stage in STAGES:
        try:
            stages[stage] = StageBudget(plan=value.plan_for(stage), early_exit=value.early_exit_for(stage))
        except (LiteStageError, KeyError):
            continue
    return StageBudgets(stages=stages)
