"""Caches heal: dead owners' locks, torn or damaged artifacts and unusable cache paths never hang, crash or serve
damaged weights. Every test uses its own cache under tmp_path."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from litestage_chain.engine import loading
from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.cache_files import CacheError, check_manifest, locked, manifest_of, write_manifest
from litestage_chain.engine.quant import kernels
from litestage_chain.engine.quant.serialize import converted_cache_path, quantize_model_linears_cached

sys.path.insert(0, str(Path(__file__).parent))
from test_quant import _TinyDecoder  # noqa: E402


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LITESTAGE_CACHE", str(cache))
    return cache


def _damage(path: Path, offset_fraction: float = 0.5, size: int = 64) -> None:
    """Random bytes written inside the file, its size unchanged (as a disk fault or a stray write would)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at : at + size] = os.urandom(min(size, len(data) - at))
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _within(seconds: float, func, *args):  # noqa: ANN001, ANN202 - a watchdog around a call that used to hang
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(func(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{func.__name__} still blocked after {seconds} s"
    return outcome[0] if outcome else None


# ---------------------------------------------------------------------------------------------- locks


def test_a_lock_whose_owner_was_killed_is_free_at_once(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from litestage_chain.cache_files import locked\n"
         f"with locked(__import__('pathlib').Path({str(lock)!r})):\n print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.exists()  # the file stays; the lock on it does not

    def take() -> bool:
        with locked(lock) as held:
            return held

    assert _within(10, take) is True


# ---------------------------------------------------------------------------------------------- kernel build


class _FakeLoad:
    """Stands for torch's `cpp_extension.load`: fails the test where torch would wait forever (its `lock` file is
    present) and "builds" by writing the shared object."""

    def __init__(self) -> None:
        self.builds = 0

    def __call__(self, *, name: str, build_directory: str, **_: object) -> types.ModuleType:
        directory = Path(build_directory)
        assert not (directory / "lock").exists(), "torch would wait forever on this lock"
        target = directory / f"{name}.so"
        if not target.exists():
            self.builds += 1
            target.write_bytes(b"\x7fELF" + os.urandom(4096))
        return types.ModuleType(name)


@pytest.fixture
def fake_load(monkeypatch: pytest.MonkeyPatch) -> _FakeLoad:
    fake = _FakeLoad()
    monkeypatch.setattr("torch.utils.cpp_extension.load", fake)
    return fake


def _build(tmp_path: Path) -> Path:
    build_dir = tmp_path / "ext" / "k1"
    kernels.build_extension(kernels.SOURCE, "k1", build_dir)
    return build_dir


def test_a_compile_killed_half_way_is_rebuilt_not_waited_on(tmp_path: Path, fake_load: _FakeLoad) -> None:
    build_dir = tmp_path / "ext" / "k1"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()  # what torch leaves when its process is killed mid-compile
    (build_dir / "main.o").write_bytes(b"torn")
    _within(20, _build, tmp_path)
    assert fake_load.builds == 1
    assert check_manifest(manifest_of(build_dir / "k1.so")) is None
    assert not (build_dir / "main.o").exists()


def test_a_stale_lock_beside_a_good_build_is_removed_and_the_build_reused(tmp_path: Path, fake_load: _FakeLoad) -> None:
    build_dir = _build(tmp_path)
    (build_dir / "lock").touch()
    _within(20, _build, tmp_path)
    assert fake_load.builds == 1


@pytest.mark.parametrize("fault", [_truncate, _damage])
def test_a_damaged_shared_object_is_rebuilt_before_it_is_loaded(
    tmp_path: Path, fake_load: _FakeLoad, fault, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    build_dir = _build(tmp_path)
    fault(build_dir / "k1.so")
    with caplog.at_level(logging.WARNING):
        _build(tmp_path)
    assert fake_load.builds == 2
    assert "rebuilding" in caplog.text
    assert check_manifest(manifest_of(build_dir / "k1.so")) is None


# ---------------------------------------------------------------------------------------------- converted weights


def _converted(tmp_path: Path) -> torch.nn.Module:
    return quantize_model_linears_cached(_TinyDecoder(), "int4", "sha-x", cache_dir=tmp_path)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = dict(a.named_buffers()), dict(b.named_buffers())
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("fault", [_truncate, _damage, lambda p: manifest_of(p).unlink()])
def test_damaged_quantised_weights_are_converted_again(
    tmp_path: Path, fault, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    torch.manual_seed(0)
    first = _converted(tmp_path)
    path = converted_cache_path("sha-x", "int4", tmp_path)
    fault(path)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        second = _converted(tmp_path)
    assert "converting again" in caplog.text
    assert _same_weights(first, second)
    assert check_manifest(manifest_of(path)) is None


def test_verified_quantised_weights_are_reused_without_conversion(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    _converted(tmp_path)
    monkeypatch.setattr("litestage_chain.engine.quant.serialize.quantize_model_linears",
                        lambda *a, **k: pytest.fail("converted again"))
    _converted(tmp_path)


def test_an_unwritable_cache_still_converts(tmp_path: Path, monkeypatch, caplog) -> None:  # noqa: ANN001
    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("litestage_chain.engine.quant.serialize.save_file", refuse)
    with caplog.at_level(logging.WARNING):
        model = _converted(tmp_path)
    assert type(model.layers[0].q_proj).__name__ == "Int4Linear"
    assert "could not cache" in caplog.text


# ---------------------------------------------------------------------------------------------- float32 conversion


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(256))
    calls: list[int] = []

    def convert(_path: Path, out_dir: Path) -> None:
        calls.append(1)
        (out_dir / "model.safetensors").write_bytes(b"W" * 4096)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return gguf, calls


@pytest.mark.parametrize(
    "fault",
    [
        lambda d: _damage(d / "model.safetensors"),
        lambda d: _truncate(d / "model.safetensors"),
        lambda d: (d / "config.json").unlink(),
        lambda d: (d / loading._COMPLETE_MARKER).write_text('{"gguf": "m.gguf", "sha256": "old"}'),  # older marker
    ],
    ids=["random-bytes", "truncated", "missing-file", "no-checksums"],
)
def test_damaged_float_conversion_is_redone(fake_gguf, fault, caplog) -> None:  # noqa: ANN001
    gguf, calls = fake_gguf
    directory, _ = loading._converted_gguf(gguf)
    loading._converted_gguf(gguf)
    assert len(calls) == 1  # verified and reused
    fault(directory)
    with caplog.at_level(logging.WARNING):
        again, _ = loading._converted_gguf(gguf)
    assert again == directory and len(calls) == 2
    assert "converting m.gguf again" in caplog.text
    assert check_manifest(directory / loading._COMPLETE_MARKER) is None


def test_a_conversion_killed_half_way_leaves_nothing_that_looks_complete(fake_gguf, monkeypatch) -> None:  # noqa: ANN001
    gguf, calls = fake_gguf

    def killed(_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"W" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "_convert_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        loading._converted_gguf(gguf)
    assert not any((cache_root() / "converted").glob("[0-9a-f]*"))
    staging = cache_root() / "converted" / f".{loading.file_sha256(gguf)[:12]}-killed"
    staging.mkdir()  # what kill -9 leaves (no cleanup runs)
    monkeypatch.setattr(loading, "_convert_gguf", lambda _p, out: (out / "model.safetensors").write_bytes(b"W"))
    loading._converted_gguf(gguf)
    assert not staging.exists()


# ---------------------------------------------------------------------------------------------- the cache path


def test_a_cache_path_that_is_a_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LITESTAGE_CACHE", str(blocker))
    with pytest.raises(CacheError, match="set LITESTAGE_CACHE to a writable directory"):
        cache_root()


def test_an_unwritable_cache_fails_the_conversion_with_a_clear_error(fake_gguf, monkeypatch) -> None:  # noqa: ANN001
    gguf, _ = fake_gguf

    def refuse(*_a: object, **_k: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loading.tempfile, "mkdtemp", refuse)
    with pytest.raises(CacheError, match="Permission denied"):
        loading._converted_gguf(gguf)


def test_manifest_notices_a_file_restored_with_its_old_times(tmp_path: Path) -> None:
    """The stat stamp includes ctime, which no user call can set back: restoring mtime does not hide a write."""
    data = tmp_path / "w.bin"
    data.write_bytes(b"a" * 1000)
    write_manifest(manifest_of(data), [data])
    before = data.stat()
    time.sleep(0.01)
    _damage(data)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "sha256" in (check_manifest(manifest_of(data)) or "")
