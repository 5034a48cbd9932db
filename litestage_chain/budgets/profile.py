"""`Profile`: the result of a LiteStage offline search, saved as JSON and loaded at inference time.

A profile says, for one model (identified by its weights' sha256), which sub-layers each reasoning
stage skips and how each stage exits early. It also keeps everything needed to judge or redo the
search that produced it: epsilon, metric, the question set searched, the importance ranking used and
every candidate evaluated. Shipped profiles live in `litestage_chain/profiles/<name>.json` and are
selected by name (e.g. ``Profile.load("csqa")``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from litestage_chain.budgets.stage_budgets import (
    ModelIdentity,
    StageBudget,
    StageBudgets,
)
from litestage_chain.budgets.stages import ContextFormat, check_stage
from litestage_chain.cache_files import atomic_write_text
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan, SubLayer
from litestage_chain.engine.sources import DEFAULT_MODEL
from litestage_chain.errors import ProfileError, ProfileMismatchError  # noqa: F401  (re-exported: where profile users look)

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel

PROFILE_FORMAT_VERSION = 1
SHIPPED_PACKAGE = "litestage_chain"
SHIPPED_FOLDER = "profiles"
MetricName = Literal["accuracy", "agreement"]


class SearchedQuestions(BaseModel):
    """The question set a search evaluated candidates on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    benchmark: str
    split: str
    size: int = Field(ge=1)
    seed: int | None = None
    fingerprint: str | None = Field(None, description="question_fingerprint of the set, to detect a changed file")


class TraceEntry(BaseModel):
    """One evaluated candidate of the search: `stage` skipping `skip_count` sub-layers, others as fixed then."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str | None = Field(description="the stage being swept; None for the full-model baseline")
    skip_count: int = Field(ge=0)
    plans: dict[str, SkipPlan] = Field(description="the plan of every stage for this evaluation")
    score: float = Field(ge=0.0, le=1.0, description="the search metric (accuracy or agreement)")
    accuracy: float | None = Field(None, ge=0.0, le=1.0, description="accuracy against gold labels, if any")
    mean_latency_seconds: float = Field(ge=0.0, description="mean end-to-end latency per question")
    generated_tokens: dict[str, float] = Field(default_factory=dict, description="mean tokens per question, per stage")
    meets_target: bool
    chosen: bool = False
    reused: bool = Field(False, description="result came from the results store, not a fresh evaluation")
    # the cost-aware search (cost_search.py) also records these; None in traces of the plain sweep
    early_exit: dict[str, EarlyExitConfig | None] | None = Field(None, description="each stage's early-exit rule")
    max_tokens: dict[str, int | None] | None = Field(None, description="each stage's token cap (None: no cap); absent "
                                                     "in traces of searches that tried no caps")
    predicted_seconds: float | None = Field(None, ge=0.0, description="latency predicted by the cost model")
    verdict: Literal["accept", "reject", "undecided"] | None = Field(None, description="the paired decision rule's")
    loss: float | None = Field(None, description="estimated loss against the full model (fraction)")
    loss_half_width: float | None = Field(None, ge=0.0, description="half-width of the loss interval (fraction)")
    questions_evaluated: int | None = Field(None, ge=0, description="questions evaluated before the decision")


class SpeedCheck(BaseModel):
    """Mean seconds per question of the full model and of the chosen plans, from alternating evaluations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = Field(ge=1, description="evaluations of each side")
    full_seconds: list[float] = Field(description="mean seconds per question of each full-model evaluation")
    plan_seconds: list[float] = Field(description="mean seconds per question of each evaluation of the plans")
    speedup: float = Field(gt=0.0, description="median full-model seconds over median seconds with the plans")
    full_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    plan_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    questions: int | None = Field(None, ge=1, description="questions each evaluation ran (None: a check recorded "
                                  "before the count was kept, which timed every searched question)")
    measured_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _one_time_per_round(self) -> SpeedCheck:
        if len(self.full_seconds) != self.rounds or len(self.plan_seconds) != self.rounds:
            raise ValueError(f"expected {self.rounds} times per side, got {len(self.full_seconds)} (full) and "
                             f"{len(self.plan_seconds)} (plans)")
        return self

    def describe(self) -> str:
        on = f" of {self.questions} questions" if self.questions is not None else ""
        return (f"side by side ({self.rounds} alternating evaluations{on} each, {self.measured_at}): full model "
                f"{median(self.full_seconds):.2f} s, plans {median(self.plan_seconds):.2f} s per question, "
                f"{self.speedup:.2f}x")


class Profile(BaseModel):
    """Per-stage skip plans and early-exit settings for one model, plus the record of how they were found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = PROFILE_FORMAT_VERSION
    model: ModelIdentity
    stages: dict[str, StageBudget] = Field(min_length=1)
    epsilon: float = Field(ge=0.0, le=1.0)
    metric: MetricName
    questions: SearchedQuestions
    importance: list[SubLayer] = Field(description="sub-layers from most to least redundant, as used by the search")
    stage_order: list[str] = Field(description="order the stages were searched in (slowest first)")
    full_score: float = Field(ge=0.0, le=1.0, description="the metric of the full model on the searched questions")
    full_latency_seconds: float = Field(ge=0.0)
    context: ContextFormat = Field(
        "separate", description="the reasoning format the search evaluated the plans in (profiles written before it "
        "was recorded were searched in 'separate'); their accuracy is only known in that format",
    )
    trace: list[TraceEntry] = Field(default_factory=list)
    speed_check: SpeedCheck | None = Field(
        None, description="the plans against the full model timed side by side after the search (`check_speed`); "
        "the trace's latencies were measured at different times and their ratios are only estimates",
    )
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    notes: str = ""

    @field_validator("importance")
    @classmethod
    def _ranking_is_a_permutation_prefix(cls, ranking: list[SubLayer]) -> list[SubLayer]:
        seen: set[SubLayer] = set()
        for layer, kind in ranking:
            if layer < 0:
                raise ValueError(f"negative layer index {layer} in the importance ranking")
            if (layer, kind) in seen:
                raise ValueError(f"sub-layer ({layer}, {kind!r}) appears twice in the importance ranking")
            seen.add((layer, kind))
        return ranking

    @model_validator(mode="after")
    def _stage_order_matches_stages(self) -> Profile:
        if sorted(self.stage_order) != sorted(self.stages):
            raise ValueError(
                f"stage_order {self.stage_order} does not list exactly the profile's stages {sorted(self.stages)}"
            )
        return self

    # ----- lookup -------------------------------------------------------------------------------------

    def _stage(self, stage: str) -> StageBudget:
        try:
            return self.stages[stage]
        except KeyError:
            raise ProfileError(
                f"profile for {self.model.name} has no settings for stage {stage!r}; it covers {sorted(self.stages)}"
            ) from None

    def plan_for(self, stage: str) -> SkipPlan:
        """The skip plan of `stage`; ProfileError naming the stage if the profile does not cover it."""
        return self._stage(stage).plan

    def early_exit_for(self, stage: str) -> EarlyExitConfig | None:
        """The early-exit rule of `stage` (None = run to EOS/stop/length)."""
        return self._stage(stage).early_exit

    def max_tokens_for(self, stage: str) -> int | None:
        """The token cap of `stage` (None = the call's own budget)."""
        return self._stage(stage).max_tokens

    def budgets(self) -> StageBudgets:
        """What the chat model and the chain run with: each stage's plan and early exit, tied to these weights and to
        the format they were searched in."""
        return StageBudgets(stages={check_stage(s): b for s, b in self.stages.items()}, model=self.model,
                            context=self.context)

    def check_model(self, model: LoadedModel) -> None:
        """Raise ProfileMismatchError unless `model` has the weights this profile was searched on."""
        self.budgets().check_model(model)

    def describe(self) -> str:
        """A few human-readable lines: what the profile is for and what each stage runs with."""
        lines = [
            f"profile for {self.model.name} (weights {self.model.weights_sha256[:12]}, {self.model.weights}), searched on "
            f"{self.questions.benchmark}/{self.questions.split} ({self.questions.size} questions), "
            f"{self.metric} >= full {self.full_score:.3f} - {self.epsilon:g}",
        ]
        for stage in self.stage_order:
            settings = self.stages[stage]
            early = settings.early_exit
            exit_text = (
                f"early exit window={early.window} threshold={early.threshold:g} min_tokens={early.min_tokens}"
                if early is not None else "no early exit"
            )
            cap = f", at most {settings.max_tokens} tokens" if settings.max_tokens is not None else ""
            lines.append(f"  {stage}: skip {settings.plan.num_skipped} ({settings.plan.describe()}), {exit_text}{cap}")
        if self.speed_check is not None:
            lines.append(f"  {self.speed_check.describe()}")
        lines.extend(f"  note: {line}" for line in self.notes.splitlines() if line.strip())
        return "\n".join(lines)

    # ----- files --------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically (a crash never leaves a half-written profile).

        The file gets the permissions of any new file (the umask's): a profile is meant to be shared, and a
        private temporary file's 0600 carried over by the rename left searched profiles unreadable to others."""
        target = Path(path)
        atomic_write_text(target, self.to_json())
        return target

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> Profile:
        """Parse and validate; errors name the source and every field that is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProfileError(
                f"{source} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from error
        except RecursionError:
            raise ProfileError(f"{source} is nested too deeply to be a profile") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{source} must hold a JSON object, found a {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "\n".join(
                f"  {'.'.join(str(p) for p in item['loc']) or '<top level>'}: {item['msg']}" for item in error.errors()
            )
            raise ProfileError(f"{source} is not a valid profile ({error.error_count()} problem(s)):\n{problems}") from error

    @classmethod
    def load(cls, path_or_name: str | Path, *, model: str | None = None) -> Profile:
        """Load a profile file, or a shipped profile by name for `model` (see `shipped_folder`).

        ``Profile.load("csqa")`` is the default model's (litestage_chain/profiles/csqa.json);
        ``Profile.load("obqa", model="qwen2.5-coder-1.5b")`` that model's (profiles/qwen2.5-coder-1.5b/obqa.json).
        """
        path = Path(path_or_name)
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise ProfileError(f"{path} is not UTF-8 text (byte {error.start}): not a profile") from None
            return cls.from_json(text, source=str(path))
        name = str(path_or_name)
        is_bare_name = path.suffix == "" and len(path.parts) == 1
        folder = shipped_folder(model)
        owner = f" for model {model!r}" if model_has_profiles(model) else ""
        if is_bare_name:
            shipped = folder.joinpath(f"{name}.json")
            if shipped.is_file():
                return cls.from_json(shipped.read_text(encoding="utf-8"), source=f"shipped profile {name!r}{owner}")
        raise ProfileError(
            f"no profile file {name!r}" + (f" and no shipped profile of that name{owner}" if is_bare_name else "")
            + f"; shipped profiles{owner}: {shipped_profiles(model) or 'none'}"
        )


DEFAULT_PROFILE_MODEL = DEFAULT_MODEL
"""The model whose shipped profiles sit directly in the profiles folder; other models' sit in a folder named after it."""


def shipped_root() -> Traversable:
    """The package folder holding the shipped `<name>.json` profiles (and one sub-folder per other model)."""
    return resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_FOLDER)


def model_has_profiles(model: str | None) -> bool:
    """Whether `model` (an embedded model's name) has shipped profiles of its own, in a folder named after it."""
    if model is None or model == DEFAULT_PROFILE_MODEL or "/" in model or "\\" in model or model.startswith("."):
        return False
    return shipped_root().joinpath(model).is_dir()


def shipped_folder(model: str | None = None) -> Traversable:
    """Where `model`'s shipped profiles are: its own folder if it has one, else the default model's (the profiles
    folder itself; applying one of those to another model fails its weights check with a message saying so)."""
    root = shipped_root()
    return root.joinpath(str(model)) if model_has_profiles(model) else root


def shipped_models() -> list[str]:
    """Names of the models that have shipped profiles."""
    root = shipped_root()
    if not root.is_dir():
        return []
    return sorted({DEFAULT_PROFILE_MODEL, *(entry.name for entry in root.iterdir() if entry.is_dir()
                                           and not entry.name.startswith(("_", ".")))})


def shipped_profiles(model: str | None = None) -> list[str]:
    """Names of the profiles shipped inside the package for `model` (default: the default model)."""
    folder = shipped_folder(model)
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))
