"""Exception types: every failure a user can cause gets one of these, with a message naming the problem.

Callers (the chat model, the CLI) catch `LiteStageError` to turn failures into clear messages instead of deep
stack traces from torch or transformers.
"""

from __future__ import annotations


class LiteStageError(Exception):
    """Base class of every error raised on purpose by litestage_chain."""


class InvalidInputError(LiteStageError, ValueError):
    """A caller passed something that cannot be run: an empty prompt, a negative token budget, a bad plan."""


class ModelLoadError(LiteStageError):
    """A model source could not be resolved, read or converted."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model loaded, but its decoder is not one the skipping engine knows how to run."""


class ProfileError(LiteStageError):
    """A profile cannot be found, read or used (malformed file, missing stage, made for another model)."""


class ProfileMismatchError(ProfileError, InvalidInputError):
    """The profile was made for different weights than the model it is being applied to."""


class GenerationCancelled(LiteStageError):
    """A generation was stopped before it finished because its caller cancelled it (a cancelled async task)."""
