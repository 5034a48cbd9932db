"""Stop strings over streamed text: find where a stop string begins, and how much text is safe to emit.

A stop string can span several tokens, so text is held back while its tail could still become a stop string;
otherwise a streaming client would see the beginning of a stop string that the final text does not contain.
"""

from __future__ import annotations

from typing import Sequence


def find_stop(text: str, stops: Sequence[str], search_from: int = 0) -> int:
    """Index in `text` where the earliest stop string starts (searching from `search_from`), or -1."""
    found = [index for stop in stops if (index := text.find(stop, search_from)) >= 0]
    return min(found) if found else -1


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be emitted now: all but a tail that is a proper prefix of some stop string.

    A trailing U+FFFD (half of a multi-byte character split across tokens) is held back too.
    """
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    end = len(text) - held
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return end
