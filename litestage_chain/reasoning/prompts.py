"""Stage prompts: load the editable templates in `prompts/` and turn a question into each stage's chat prompt.

The templates live as plain text files (not Python strings) so users can read and tune them without touching code;
see `prompts/README.md` for the format. This module only parses those files and renders them into LangChain
`ChatPromptTemplate`s: few-shot exemplars become earlier user/assistant turns, because small instruction-tuned
models follow a demonstrated turn format far better than an instruction alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, ConfigDict

from litestage_chain.budgets.stages import STAGES, Stage, check_stage
from litestage_chain.data.types import Choice, Question, QuestionKind
from litestage_chain.errors import InvalidInputError

PROMPTS_ENV_VAR = "LITESTAGE_PROMPTS_DIR"
_SECTION = re.compile(r"^\[(system|user|assistant)\]\s*$")


class Exemplar(BaseModel):
    """A worked example shown to the model before the real question (see `prompts/fewshot/*.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    choices: tuple[Choice, ...]
    key_information: str
    explanations: tuple[str, ...]
    answer: str

    def as_question(self) -> Question:
        return Question(question=self.question, choices=self.choices, answer=self.answer)


@dataclass(frozen=True)
class StageTemplate:
    """The three sections of one template file."""

    system: str
    user: str
    assistant: str


def parse_template(text: str, *, source: str = "<template>") -> StageTemplate:
    """Split a template file into its `[system]`, `[user]` and `[assistant]` sections (comments dropped)."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SECTION.match(line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip():
            raise InvalidInputError(f"{source}: text before the first [system]/[user]/[assistant] section: {line!r}")
    missing = [name for name in ("system", "user", "assistant") if name not in sections]
    if missing:
        raise InvalidInputError(f"{source}: missing section(s) {missing}")
    return StageTemplate(**{name: "\n".join(lines).strip() for name, lines in sections.items()})


def default_prompts_dir() -> Path:
    """Where the templates are read from: `$LITESTAGE_PROMPTS_DIR`, else the repository's top-level `prompts/`,
    else the copy packaged inside installed wheels as `litestage_chain/prompt_templates/`."""
    env = os.environ.get(PROMPTS_ENV_VAR)
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parent.parent  # litestage_chain/
    for candidate in (package_dir.parent / "prompts", package_dir / "prompt_templates"):
        if (candidate / "mcq" / "recall.txt").is_file():
            return candidate
    raise InvalidInputError(
        f"cannot find the prompt templates (looked for prompts/mcq/recall.txt next to the package); "
        f"set {PROMPTS_ENV_VAR} to a folder laid out like the repository's prompts/"
    )


@dataclass(frozen=True)
class PromptSet:
    """All stage templates and few-shot exemplars of one prompts folder."""

    directory: Path
    templates: Mapping[tuple[QuestionKind, Stage], StageTemplate]
    exemplars: Mapping[QuestionKind, tuple[Exemplar, ...]]
    shared: Mapping[QuestionKind, StageTemplate] = dataclass_field(default_factory=dict)
    """The shared-context templates (`{kind}/shared.txt`), for the folders that have them."""

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> PromptSet:
        """Read every template and exemplar file, failing with the offending path if one is missing or broken."""
        root = Path(directory) if directory is not None else default_prompts_dir()
        return _load_cached(root.resolve())

    def template(self, kind: QuestionKind, stage: str) -> StageTemplate:
        return self.templates[(kind, check_stage(stage))]

    def shared_chat_prompt(self, kind: QuestionKind, *, num_shots: int = 2) -> ChatPromptTemplate:
        """The shared-context prompt: one instruction for all stages, `num_shots` complete three-stage worked
        examples as chat turns, then the question (the stages are written into one assistant turn after it)."""
        template = self.shared.get(kind)
        if template is None:
            raise InvalidInputError(
                f"{self.directory / kind / 'shared.txt'} is missing: the shared-context format needs it"
            )
        return self._with_shots(template, kind, num_shots)

    def chat_prompt(self, kind: QuestionKind, stage: str, *, num_shots: int = 2) -> ChatPromptTemplate:
        """The stage's prompt: system instruction, `num_shots` worked examples as chat turns, then the question.

        Input variables are `question`, `options`, `key_information` and `explanations` (a stage ignores those
        its template does not mention).
        """
        return self._with_shots(self.template(kind, stage), kind, num_shots)

    def _with_shots(self, template: StageTemplate, kind: QuestionKind, num_shots: int) -> ChatPromptTemplate:
        if num_shots < 0:
            raise InvalidInputError(f"num_shots must be >= 0, got {num_shots}")
        available = len(self.exemplars[kind])
        if num_shots > available:  # silently showing fewer would make runs with different settings look the same
            raise InvalidInputError(f"num_shots={num_shots} but the prompts hold only {available} {kind} examples")
        shots: list[BaseMessage] = []
        for exemplar in self.exemplars[kind][:num_shots]:
            values = exemplar_values(exemplar)
            shots.append(HumanMessage(_format(template.user, values)))
            shots.append(AIMessage(_format(template.assistant, values)))
        return ChatPromptTemplate.from_messages(
            [("system", _escape(template.system)), *shots, ("human", template.user)],
            template_format="f-string",
        )


def exemplar_values(exemplar: Exemplar) -> dict[str, str]:
    """Placeholder values for rendering a worked example."""
    question = exemplar.as_question()
    return {
        "question": exemplar.question,
        "options": question.options_text,
        "key_information": exemplar.key_information,
        "explanations": "\n".join(exemplar.explanations),
        "answer_label": exemplar.answer,
        "answer_text": question.text_of(exemplar.answer) or "",
    }


def question_values(question: Question, *, key_information: str = "", explanations: str = "") -> dict[str, str]:
    """Placeholder values for the real question at some point of the chain."""
    return {
        "question": question.question,
        "options": question.options_text,
        "key_information": key_information,
        "explanations": explanations,
    }


def prompt_values(state: Mapping[str, Any]) -> dict[str, str]:
    """The values a stage prompt is rendered from: a chain state's question and the earlier stages' outputs."""
    recall = state.get("recall")
    analysis = state.get("analysis")
    return question_values(
        state["question"],
        key_information=recall.text if recall else "",
        explanations=analysis.text if analysis else "",
    )


def _format(template: str, values: Mapping[str, str]) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInputError(f"bad placeholder in prompt template {template[:60]!r}...: {exc}") from exc


def _escape(text: str) -> str:
    """System text is literal: escape braces so ChatPromptTemplate does not read them as variables."""
    return text.replace("{{", "{").replace("}}", "}").replace("{", "{{").replace("}", "}}")


@lru_cache(maxsize=8)
def _load_cached(root: Path) -> PromptSet:
    if not root.is_dir():
        raise InvalidInputError(f"prompts folder {root} does not exist")
    templates: dict[tuple[QuestionKind, Stage], StageTemplate] = {}
    exemplars: dict[QuestionKind, tuple[Exemplar, ...]] = {}
    shared: dict[QuestionKind, StageTemplate] = {}
    kinds: Sequence[QuestionKind] = ("mcq", "yesno")
    for kind in kinds:
        for stage in STAGES:
            path = root / kind / f"{stage}.txt"
            if not path.is_file():
                raise InvalidInputError(f"missing prompt template {path}")
            templates[(kind, stage)] = parse_template(path.read_text(encoding="utf-8"), source=str(path))
        shared_path = root / kind / "shared.txt"
        if shared_path.is_file():
            shared[kind] = parse_template(shared_path.read_text(encoding="utf-8"), source=str(shared_path))
        shots_path = root / "fewshot" / f"{kind}.json"
        if not shots_path.is_file():
            raise InvalidInputError(f"missing few-shot file {shots_path}")
        try:
            raw = json.loads(shots_path.read_text(encoding="utf-8"))
            exemplars[kind] = tuple(Exemplar.model_validate(item) for item in raw)
        except ValueError as exc:
            raise InvalidInputError(f"{shots_path}: {exc}") from exc
    return PromptSet(directory=root, templates=templates, exemplars=exemplars, shared=shared)
