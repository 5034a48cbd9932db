"""Cheaper weight formats for CPU decoding, as drop-in ``nn.Linear`` replacements.

``quantize_model_linears(model, "int8")`` swaps the decoder Linears and ``lm_head``;
``convert_linear(linear, fmt)`` converts one module (e.g. a fused q/k/v projection);
``quantize_model_linears_cached`` does the same through a safetensors cache.
"""

from litestage_chain.engine.quant.convert import (
    quantize_model_linears,
    target_linear_names,
)
from litestage_chain.engine.quant.formats import (
    WEIGHT_FORMATS,
    BFloat16Linear,
    Int4Linear,
    Int8Linear,
    WeightFormat,
    convert_linear,
)
from litestage_chain.engine.quant.kernels import get_kernels, kernels_status
from litestage_chain.engine.quant.serialize import (
    converted_cache_path,
    load_converted,
    quantize_model_linears_cached,
    save_converted,
)

__all__ = [
    "WEIGHT_FORMATS",
    "BFloat16Linear",
    "Int4Linear",
    "Int8Linear",
    "WeightFormat",
    "convert_linear",
    "converted_cache_path",
    "get_kernels",
    "kernels_status",
    "load_converted",
    "quantize_model_linears",
    "quantize_model_linears_cached",
    "save_converted",
    "target_linear_names",
]
