"""Save and load converted Linear weights as safetensors, and cache conversions on disk.

Why: quantising a 1.5B model takes tens of seconds of CPU each start; reading the converted
tensors back is a memory map. safetensors (never pickle) keeps the cache file inert data: a
tampered cache can at worst give wrong numbers, not run code. The module kind and its
settings live in the file's JSON metadata, so loading needs no class registry in the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.cache_files import check_manifest, locked, manifest_of, write_manifest
from litestage_chain.engine.quant.convert import (
    _replace,
    quantize_model_linears,
    target_linear_names,
)
from litestage_chain.engine.quant.formats import (
    BFloat16Linear,
    Int4Linear,
    Int8Linear,
    WeightFormat,
)

#: Bump when a format's layout or rounding changes so stale caches are not reused.
FORMAT_VERSION = 3
_META_KEY = "litestage_quant"

logger = logging.getLogger(__name__)

_KINDS: dict[type[nn.Module], str] = {Int8Linear: "int8", Int4Linear: "int4", BFloat16Linear: "bfloat16"}


def _module_entry(module: nn.Module) -> dict[str, object]:
    kind = _KINDS.get(type(module))
    if kind is None:
        raise TypeError(f"cannot serialise {type(module).__name__}; only converted Linears")
    return {"kind": kind, "in_features": int(module.in_features), "out_features": int(module.out_features)}


def _converted_modules(source: nn.Module | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    if isinstance(source, nn.Module):
        return {n: m for n, m in source.named_modules() if type(m) in _KINDS}
    return dict(source)


def save_converted(
    source: nn.Module | Mapping[str, nn.Module], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write every converted Linear (of a model, or of a name -> module mapping) to ``path``.

    Written to a temporary file then renamed, so readers never see a half-written cache.
    """
    modules = _converted_modules(source)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, object]] = {}
    for name, module in modules.items():
        entries[name] = _module_entry(module)
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is not None:
                tensors[f"{name}.{buffer_name}"] = buffer.detach().contiguous()
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[_META_KEY] = json.dumps({"version": FORMAT_VERSION, "modules": entries})
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with locked(_lock_of(target)):
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, target)
            write_manifest(manifest_of(target), [target])
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _lock_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def load_cached_converted(path: Path) -> dict[str, nn.Module] | None:
    """The converted modules cached at `path`, or ``None`` when there is no usable cache there.

    The file is used only if it has the size and sha256 recorded when it was written (`cache_files`): random
    bytes in a cached weight would otherwise give gibberish answers. A damaged, truncated or unreadable cache is
    reported, deleted and left for the caller to convert again.
    """
    if not path.exists():
        return None
    with locked(_lock_of(path)):  # a writer still renaming or recording it finishes first
        problem = check_manifest(manifest_of(path))
        if problem is None:
            try:
                return load_converted(path)
            except Exception as error:  # noqa: BLE001 - safetensors raises its own types for torn files
                problem = f"{type(error).__name__}: {error}"
        logger.warning("converted weights cache %s is damaged or incomplete (%s); converting again", path, problem)
        for stale in (path, manifest_of(path)):
            with contextlib.suppress(OSError):
                stale.unlink()
    return None


def load_converted(path: str | os.PathLike[str]) -> dict[str, nn.Module]:
    """Rebuild the name -> converted module mapping written by :func:`save_converted`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if _META_KEY not in meta:
        raise ValueError(f"{path} is not a converted-weights file (no {_META_KEY!r} metadata)")
    info = json.loads(meta[_META_KEY])
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {info.get('version')}, expected {FORMAT_VERSION}")
    tensors = load_file(str(path))
    modules: dict[str, nn.Module] = {}
    for name, entry in info["modules"].items():
        bias = tensors.get(f"{name}.bias")
        kind = entry["kind"]
        shape = (int(entry["in_features"]), int(entry["out_features"]))
        if kind == "int8":
            modules[name] = Int8Linear(tensors[f"{name}.qweight"], tensors[f"{name}.scales"], *shape, bias)
        elif kind == "int4":
            modules[name] = Int4Linear(tensors[f"{name}.qweight"], tensors[f"{name}.params"], *shape, bias)
        elif kind == "bfloat16":
            modules[name] = BFloat16Linear(tensors[f"{name}.weight"], bias)
        else:
            raise ValueError(f"{path}: unknown module kind {kind!r} for {name}")
    return modules


def converted_cache_path(weights_id: str, fmt: WeightFormat, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache file for ``weights_id`` (e.g. the model's weights sha256) in format ``fmt``."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "converted" / f"{weights_id[:32]}-{fmt}-v{FORMAT_VERSION}.safetensors"


def quantize_model_linears_cached(
    model: nn.Module,
    fmt: WeightFormat,
    weights_id: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """:func:`quantize_model_linears` in place, reusing a safetensors cache keyed by ``weights_id``.

    A cache whose module names do not match this model's targets is ignored and rewritten.
    """
    if fmt == "float32":
        return model
    path = converted_cache_path(weights_id, fmt, cache_dir)
    modules = load_cached_converted(path) or {}
    if modules and set(modules) == set(target_linear_names(model)):
        for name, module in modules.items():
            _replace(model, name, module)
        return model
    quantize_model_linears(model, fmt)
    save_converted_or_warn(model, path, {"weights_id": weights_id, "format": fmt})
    return model


def save_converted_or_warn(
    source: nn.Module | Mapping[str, nn.Module], path: Path, metadata: Mapping[str, str]
) -> None:
    """`save_converted`, but a cache that cannot be written (read-only, full disk) only costs the next load a
    conversion: the weights just converted are in memory and the call goes on."""
    try:
        save_converted(source, path, metadata)
    except OSError as error:
        logger.warning("could not cache converted weights at %s (%s); they will be converted again next time",
                       path, error.strerror or error)
