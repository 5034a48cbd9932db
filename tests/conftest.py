"""Shared fixtures: tiny random models for unit tests, the real default model for integration tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402
from tiny_models import tiny_llama as _tiny_llama  # noqa: E402
from tiny_models import tiny_qwen2 as _tiny_qwen2  # noqa: E402

from litestage_chain import LoadedModel, from_pretrained_objects  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def one_torch_thread():
    """One torch thread for tiny-model tests: they are overhead-bound, and on a shared, loaded CPU multi-threaded
    tiny matmuls spin-wait and run many times slower. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    model, tokenizer = _tiny_llama()
    return from_pretrained_objects(model, tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> LoadedModel:
    model, tokenizer = _tiny_qwen2()
    return from_pretrained_objects(model, tokenizer, name="tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_long() -> LoadedModel:
    """A tiny random Llama with a long context: tool and schema prompts are long in byte tokens."""
    from tiny_models import tiny_long_context_llama

    return from_pretrained_objects(*tiny_long_context_llama(), name="tiny-long")


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"]
"""Every supported decoder family, by the name of its tiny model in `tiny_models`."""


@pytest.fixture(scope="session")
def tiny_family_models() -> dict[str, LoadedModel]:
    """One tiny model per family, built on first use and shared by the session."""
    return {}


@pytest.fixture(params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest, tiny_family_models: dict[str, LoadedModel]) -> LoadedModel:
    """Each test using this runs once per supported architecture."""
    family = request.param
    if family in ("llama", "qwen2"):
        return request.getfixturevalue(f"tiny_{family}")
    if family not in tiny_family_models:
        model, tokenizer = getattr(tiny_models, f"tiny_{family}")()
        tiny_family_models[family] = from_pretrained_objects(model, tokenizer, name=f"tiny-{family}")
    return tiny_family_models[family]


@pytest.fixture(scope="session")
def real_model() -> LoadedModel:
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from litestage_chain import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data folder {SHARED_DATA} is absent (it lives beside the repository)")
    return SHARED_DATA
