"""`load_model`: turn a model source into a `LoadedModel` the engine can run, converting and caching GGUF once.

GGUF files are dequantised by transformers on load, which takes ~20 s for 135M parameters and ~90 s for 1.5B.
The converted model is saved once as safetensors (plus tokenizer) under the cache root, keyed by the GGUF file's
sha256, so later loads take seconds. Nothing is ever unpickled: only safetensors weights are read.

Loaded models are cached per process: every chat model, bound copy and chain node that names the same source shares
one set of weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch

from litestage_chain.cache_files import (
    check_manifest,
    file_sha256,
    locked,
    manifest_of,
    unusable_cache,
    write_manifest,
)
from litestage_chain.engine.architecture import (
    DecoderView,
    build_decoder_view,
    check_supported,
    context_length,
)
from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.engine.context_cache import ContextCache
from litestage_chain.engine.prefix_cache import PrefixCache
from litestage_chain.engine.quant.formats import (
    compiled_kernels_available,
    default_lm_head_format,
)
from litestage_chain.engine.quant.serialize import converted_cache_path
from litestage_chain.engine.quant.view import quantize_decoder_view, view_linears
from litestage_chain.engine.sources import (
    ResolvedSource,
    recommended_weights,
    resolve_source,
)
from litestage_chain.engine.progress import first_run_step
from litestage_chain.engine.weight_formats import AUTO, WEIGHT_FORMATS
from litestage_chain.errors import ModelLoadError

logger = logging.getLogger(__name__)

_COMPLETE_MARKER = "litestage-conversion.json"
_GGUF_MAGIC = b"GGUF"


@dataclass
class LoadedModel:
    """A model ready for the engine: weights, tokenizer, prepared decoder view and identity."""

    model: Any
    tokenizer: Any
    name: str
    weights_sha256: str
    source: str = ""
    weights: str = "float32"
    float_weights: Literal["keep", "release", "absent"] = "keep"
    """What happens to the float32 projections of `model` when `weights` is smaller: "keep" them (a caller's model),
    "release" them (loaded here from the float32 checkpoint), or they are "absent" (never loaded)."""
    view: DecoderView = field(init=False, repr=False)
    prefix_cache: PrefixCache = field(init=False, repr=False)
    context_cache: ContextCache = field(init=False, repr=False)
    """KV entries of earlier calls' prompts and outputs, for calls that continue them (shared-context stages)."""
    eos_token_ids: frozenset[int] = field(init=False)
    pad_token_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.view = build_decoder_view(self.model)
        if self.weights != "float32":

            float_view = self.view
            self.view = quantize_decoder_view(float_view, self.weights, weights_id=self.weights_sha256 or None)
            if self.float_weights != "keep":
                _release_converted_weights(
                    self.model, float_view, self.view, self.weights, unmap=self.float_weights == "release"
                )
        self.prefix_cache = PrefixCache()
        self.context_cache = ContextCache()
        self.eos_token_ids = frozenset(_eos_ids(self.model, self.tokenizer))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))

    @property
    def num_layers(self) -> int:
        return self.view.num_layers

    @property
    def vocab_size(self) -> int:
        return int(self.view.embed.weight.shape[0])

    @property
    def max_positions(self) -> int:
        return context_length(self.model.config)

    def encode(self, text: str) -> list[int]:
        """Token ids of a complete prompt text (special tokens in the text are kept, none are added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: Optional[list[dict[str, Any]]] = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render HF-style chat messages to prompt text with the tokenizer's own chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelLoadError(f"the tokenizer of {self.name} has no chat template")
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if tools:
            kwargs["tools"] = tools
        return str(self.tokenizer.apply_chat_template(messages, **kwargs))


_VIEW_PROJECTIONS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("attention", "qkv"): ("self_attn", ("q_proj", "k_proj", "v_proj", "qkv_proj")),
    ("attention", "o_proj"): ("self_attn", ("o_proj",)),
    ("mlp", "gate_up"): ("mlp", ("gate_proj", "up_proj", "gate_up_proj")),
    ("mlp", "down_proj"): ("mlp", ("down_proj",)),
}
"""Each per-layer view module (as named by `quant.view.view_linears`) and the transformers linears it replaces
(a family has either the separate projections or the fused one, e.g. Phi-3's `qkv_proj`)."""
_PROJECTIONS = tuple(name for _, names in _VIEW_PROJECTIONS.values() for name in names)


def _release_converted_weights(
    model: Any, float_view: DecoderView, converted: DecoderView, fmt: str, unmap: bool
) -> None:
    """Drop the float32 copies of every projection the converted view replaced (the point of a smaller format).

    Why: the engine runs only the view, and keeping the float32 matrices beside their int8/int4 copies would
    make a "smaller" format use more memory than float32 alone. The transformers modules get meta-device
    weights (shape kept, no storage); calling `lm.model` itself then fails, so only models this module loaded
    (never a caller's model passed to `from_pretrained_objects`) are released.
    """

    replaced = {name for name, module in view_linears(converted).items() if type(module) is not torch.nn.Linear}
    for index, layer in enumerate(model.model.layers):
        for (kind, part), (block, names) in _VIEW_PROJECTIONS.items():
            if f"{kind}.{index}.{part}" in replaced:
                owner = getattr(layer, block)
                _to_meta(*(getattr(owner, name) for name in names if hasattr(owner, name)))
    if "lm_head" in replaced:
        _to_meta(model.lm_head)  # a tied head shares the embedding's Parameter: only the head's reference goes
    float_modules = view_linears(float_view)
    for name in replaced:  # the float view's fused float32 modules hold the storage the views above pointed into
        if type(float_modules[name]) is torch.nn.Linear:
            _to_meta(float_modules[name])
    if unmap:
        # What stays in float32 (embedding, norms, biases) may be a view into the memory-mapped float32 checkpoint;
        # copying it out lets that whole mapping, and the pages the conversion read through it, be unmapped.
        for module in model.modules():
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone()

    def refuse(_module: Any, _args: Any) -> None:
        raise ModelLoadError(
            f"this transformers model's float32 projections were released when it was loaded as {fmt!r}; run it "
            "through the engine (generate, ChatLiteStage), or load it with weights='float32' to call it directly"
        )

    # Every module whose forward would reach a released weight, so `lm.model.model(...)` or a layer called alone
    # fails with this message rather than torch's meta-tensor error. Not the norms or the embedding: the engine
    # calls those modules itself.
    callers = [model, model.model]
    for layer in model.model.layers:
        callers += [layer, layer.self_attn, layer.mlp]
    if "lm_head" in replaced:
        callers.append(model.lm_head)
    for module in callers:
        module.register_forward_pre_hook(refuse)
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (loading leaves hundreds of MB of freed, fragmented heap
    that would otherwise stay resident). A no-op where glibc's `malloc_trim` does not exist."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)  # type: ignore[union-attr]
    except (OSError, AttributeError, TypeError):
        pass


def _to_meta(*linears: Any) -> None:
    for linear in linears:
        linear.weight = torch.nn.Parameter(torch.empty_like(linear.weight, device="meta"), requires_grad=False)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


_LOADED: dict[tuple[str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_model(source: str = "smollm2-135m", weights: str = "float32") -> LoadedModel:
    """Load (once per process) the model named by `source`, its projections in the weight format `weights`.

    `source` is an embedded name (`"smollm2-135m"`, `"qwen2.5-coder-1.5b"`), a `.gguf` file, a local transformers
    model directory, or a hub id. `weights` is `"float32"` (reference), `"bfloat16"`, `"int8"` or `"int4"`
    (weight-only, group-wise scales; converted once and cached), or `"auto"`: the format recommended for that
    model (`sources.RECOMMENDED_WEIGHTS`; float32 for models without a recommendation). In the smaller formats the
    float32 projections are not kept, so `lm.model` (the transformers model) cannot be called; use float32 for
    that. Raises `ModelLoadError` with the reason when it cannot.
    """
    weights = _resolve_weights(source, weights)
    resolved = resolve_source(source)
    key = (resolved.location, weights)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load_resolved(resolved, weights)
        return _LOADED[key]


def _resolve_weights(source: Optional[str], weights: str) -> str:
    """The concrete format for `weights` ("auto" -> the source's recommended one), or a clear error."""
    if weights == AUTO:
        weights = recommended_weights(source) if isinstance(source, str) else "float32"
        # Any compiled path, the portable one included (it runs decode, prefill dequantises on the fly): the
        # no-kernel fallback would be float32 speed at float32 size.
        if weights in ("int8", "int4") and not compiled_kernels_available():
            weights = "float32"
    if weights not in WEIGHT_FORMATS:
        raise ModelLoadError(f"unknown weight format {weights!r}; supported: {AUTO}, {', '.join(WEIGHT_FORMATS)}")
    return weights


def from_pretrained_objects(
    model: Any, tokenizer: Any, name: str = "custom", weights_sha256: str = "", weights: str = "float32"
) -> LoadedModel:
    """Wrap an already-built transformers model and tokenizer (tests, custom pipelines)."""
    check_supported(model.config)
    weights = _resolve_weights(None, weights)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, weights_sha256=weights_sha256, source=name, weights=weights
    )


def _load_resolved(resolved: ResolvedSource, weights: str) -> LoadedModel:
    if resolved.kind == "gguf":
        directory, digest = _converted_gguf(Path(resolved.location))
    elif resolved.kind == "directory":
        directory, digest = Path(resolved.location), _directory_digest(Path(resolved.location))
    else:
        directory = _hub_snapshot(resolved.location)
        digest = _directory_digest(directory)
    if weights != "float32":
        lean = _load_without_float_projections(directory, digest, resolved, weights)
        if lean is not None:
            return lean
    model, tokenizer = _from_directory(directory)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=resolved.name,
        weights_sha256=digest,
        source=resolved.location,
        weights=weights,
        float_weights="keep" if weights == "float32" else "release",
    )



def _is_projection_weight(name: str) -> bool:
    parts = name.split(".")
    return parts[-1] == "weight" and (parts[-2] in _PROJECTIONS or name == "lm_head.weight")


def _load_without_float_projections(
    directory: Path, digest: str, resolved: ResolvedSource, weights: str
) -> Optional[LoadedModel]:
    """Load a model whose `weights`-format projections are already cached without reading their float32 copies.

    Why: loading float32 first and converting afterwards makes the peak memory of an int8 model most of the
    float32 model's (7.3 of 9.9 GB for the 1.5B model). Here the transformers model is built on the meta device,
    only the small float tensors (embedding, norms, biases) are read from the checkpoint, and the view takes
    its projections from the conversion cache. Returns None (the caller then loads normally) when there is no
    usable cache or anything else would be left without real weights.
    """
    from safetensors import safe_open
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )


    cached = converted_cache_path(digest, weights)
    if default_lm_head_format(weights) == "float32" or check_manifest(manifest_of(cached)) is not None:
        return None  # no cache, or a damaged one: the ordinary path reports it and converts again
    try:
        config = AutoConfig.from_pretrained(directory)
        check_supported(config)
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state: dict[str, torch.Tensor] = {}
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    if not _is_projection_weight(name):
                        tensor = handle.get_tensor(name)
                        state[name] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
        model.load_state_dict(state, strict=False, assign=True)
        inner = model.model
        inner.rotary_emb = type(inner.rotary_emb)(config=model.config)  # its buffers are computed, not stored
        if hasattr(inner.embed_tokens, "scalar_embed_scale"):  # so is Gemma's sqrt(hidden) embedding scale
            inner.embed_tokens.embed_scale = torch.tensor(inner.embed_tokens.scalar_embed_scale)
        if (directory / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
        unloaded = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                    if t.device.type == "meta" and not _is_projection_weight(n)]
        if unloaded:
            logger.debug("lean %s load of %s: %s not in the checkpoint; loading float32 first", weights, directory,
                         unloaded[:3])
            return None
        loaded = LoadedModel(model=model, tokenizer=tokenizer, name=resolved.name, weights_sha256=digest,
                             source=resolved.location, weights=weights, float_weights="absent")
    except Exception as error:  # any surprise here just means: take the ordinary path
        logger.debug("lean %s load of %s failed (%s); loading float32 first", weights, directory, error)
        return None
    modules = view_linears(loaded.view).values()
    if any(t.device.type == "meta" for m in modules for t in [*m.parameters(), *m.buffers()]):
        logger.debug("lean %s load of %s: the conversion cache did not cover every projection", weights, directory)
        return None
    return loaded


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars while loading (they would interleave with streamed answers)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_directory(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as error:  # transformers raises many types for a bad config
        raise ModelLoadError(f"cannot read the model config in {directory}: {error}") from error
    check_supported(config)
    if not any(directory.glob("*.safetensors")):
        raise ModelLoadError(
            f"{directory} has no .safetensors weights; only safetensors are loaded (pickled weights are never read)"
        )
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load the model in {directory}: {error}") from error
    return model, tokenizer


def _directory_digest(directory: Path) -> str:
    """Identity of a model directory: sha256 over its safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _converted_gguf(path: Path) -> tuple[Path, str]:
    """Return the cached safetensors conversion of a GGUF file (converting it first if needed) and the file's sha256."""
    with path.open("rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes): the file is corrupt or of another format")
    digest = file_sha256(path)
    target = cache_root() / "converted" / digest
    try:
        with locked(target.with_name(f".{digest}.lock")):  # a concurrent conversion of the same file: wait for it
            if target.exists():
                problem = check_manifest(target / _COMPLETE_MARKER)
                if problem is None:
                    return target, digest
                logger.warning("converted weights cache %s is damaged or incomplete (%s); converting %s again",
                               target, problem, path.name)
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            for dead in target.parent.glob(f".{digest[:12]}-*"):  # staging left by a conversion that was killed
                shutil.rmtree(dead, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
            try:
                with first_run_step(f"converting {path.name} to float32 safetensors"):
                    _convert_gguf(path, staging)
                files = [p for p in staging.rglob("*") if p.is_file()]
                write_manifest(staging / _COMPLETE_MARKER, files, {"gguf": path.name, "sha256": digest})
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except OSError as error:  # a read-only cache, a full disk
        raise unusable_cache(target.parent, error) from error
    return target, digest


def _convert_gguf(path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as float32 safetensors plus tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as error:
        raise ModelLoadError(f"cannot read GGUF file {path}: {error}") from error
    check_supported(model.config)
    # save_pretrained refuses models that carry the GGUF quantiser marker, although the weights are plain floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _quiet_transformers():
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _hub_snapshot(repo_id: str) -> Path:
    """Download (or find in the local HF cache) a hub model's safetensors snapshot."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        )
    except Exception as error:
        raise ModelLoadError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {error}); "
            "pass a local model directory or GGUF file instead"
        ) from error
