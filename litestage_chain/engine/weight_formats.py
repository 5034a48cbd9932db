"""The weight formats a model can be loaded in: one torch-free list for the loader, the kernels and the CLIs."""

from __future__ import annotations

from typing import Literal

WeightFormat = Literal["float32", "bfloat16", "int8", "int4"]
WEIGHT_FORMATS: tuple[str, ...] = ("float32", "bfloat16", "int8", "int4")

AUTO = "auto"
"""Ask for the model's recommended format: the fastest one that passed the accuracy guard on that model."""
WEIGHT_CHOICES: tuple[str, ...] = (AUTO, *WEIGHT_FORMATS)
