"""A radix tree of KV entries keyed by token prefixes, across calls and across skip plans.

The stages of a shared-context reasoning chain are consecutive segments of one token sequence: stage s+1's prompt is
stage s's prompt + output + the next stage's header. Re-prefilling that whole sequence at every stage is most of the
summary stage's time on a CPU. This table keeps the keys and values of every sequence a call prefilled or decoded, so
a later call reuses the longest cached prefix of its prompt and prefills only the rest (SGLang's RadixAttention
design: `python/sglang/srt/mem_cache/radix_cache.py`; an edge holds a run of tokens and their KV entries, a new
sequence splits an edge where it diverges, and least recently used leaves are evicted first).

**Plans are part of the key.** A token's keys and values depend on the plan it was computed under (the residual
stream that reaches layer l differs), so each token is stored with the id of the plan that computed it, and a prompt
matches only a prefix whose tokens carry the same plans the caller asks for (`prompt_plans` in `generate`). The
outcome of a call therefore depends on its tokens and their plans alone, never on what the cache happened to hold:
in float32, reuse never changes an output compared with the same call on a cold cache. With int8/int4 weights it
can: the kernels round each activation row to int8, and a token computed in another pass (loaded instead of
prefilled, prefilled with other tokens) has sums in another order, which moves some roundings by one step; greedy
decoding then goes the other way at a near-tie. Measured on SmolLM2-135M, 12 OBQA dev questions, each chain run on a
cache holding only the few-shot prefixes and then again on a warm one: float32 0 texts of 72 differed, int8 3, int4 5
(all in recall or analysis; no answer changed). A benchmark empties the cache between runs for that reason too.

**Every layer has entries.** Entries are stored for all layers, including the attention layers a token's plan
skipped: a later call under another plan may run attention there. A skipped attention layer's keys and values are
computed from the residual stream as the token passes that layer (the k/v projection alone: no queries, no attention,
no output projection; see `forward._project_kv`). That costs 2 * kv_heads * head_dim / hidden of one token's q/k/v/o
work at that layer under grouped-query attention (14% for Qwen2.5-1.5B, 25% for SmolLM2-135M; 1.7% and 6% of a whole
layer with its MLP), instead of a backfill pass at every plan switch that would need the residual stream of every
earlier token at every layer kept in memory.

The table is bounded in bytes; entries are immutable once stored (a lookup returns copies), and one lock guards the
tree.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from litestage_chain.engine.skip_plan import SkipPlan

Key = tuple[int, int]  # (token id, plan id)


@dataclass(eq=False)
class _Node:
    """An edge of the tree: a run of (token, plan) pairs and their entries `[layers, 2, kv_heads, run, head_dim]`."""

    key: list[Key]
    kv: Optional[torch.Tensor]
    parent: Optional["_Node"]
    children: dict[Key, "_Node"] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


@dataclass(frozen=True)
class ContextMatch:
    """The longest cached prefix of a query: its length and its entries, as the tree's pieces in order (each
    `[layers, 2, kv_heads, tokens, head_dim]`; read-only views: a node's entries are replaced, never written)."""

    length: int
    pieces: tuple[torch.Tensor, ...] = ()

    @property
    def kv(self) -> Optional[torch.Tensor]:
        """The entries as one tensor `[layers, 2, kv_heads, length, head_dim]` (a copy), or None if nothing matched.
        Loading into a cache should write the pieces instead: it saves copying them twice."""
        return torch.cat(self.pieces, dim=3) if self.pieces else None


class ContextCache:
    """A thread-safe radix tree of KV entries over (token, plan) sequences, bounded in bytes (LRU leaves go first)."""

    def __init__(self, max_bytes: int = 1024**3) -> None:
        self.max_bytes = max_bytes
        self._root = _Node(key=[], kv=None, parent=None)
        self._plans: dict[SkipPlan, int] = {}
        self._pinned: set[tuple[Key, ...]] = set()  # few-shot prefixes `clear(keep_pinned=True)` keeps
        self._bytes = 0
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self.hits = 0  # lookups that reused at least one token
        self.reused_tokens = 0
        self.evictions = 0

    def plan_id(self, plan: SkipPlan) -> int:
        """A small integer standing for `plan` in keys (equal plans, equal ids)."""
        with self._lock:
            return self._plans.setdefault(plan, len(self._plans))

    def match(self, keys: Sequence[Key], limit: Optional[int] = None) -> ContextMatch:
        """The longest cached prefix of `keys` (at most `limit` tokens), with its entries (`ContextMatch.pieces`)."""
        with self._lock:
            length, pieces = self._longest(keys, limit, stamp=next(self._clock))
            if length:
                self.hits += 1
                self.reused_tokens += length
        return ContextMatch(length, tuple(pieces))

    def peek(self, keys: Sequence[Key], limit: Optional[int] = None) -> int:
        """The length `match` would return, without copying entries or counting a hit."""
        with self._lock:
            return self._longest(keys, limit)[0]

    def _longest(
        self, keys: Sequence[Key], limit: Optional[int] = None, stamp: Optional[int] = None
    ) -> tuple[int, list[torch.Tensor]]:
        """The walk of `match`, `peek` and `clear` (lock held): the longest stored prefix of `keys` (at most `limit`
        tokens) and its entries as views of the tree's pieces; with `stamp`, the edges walked count as used."""
        limit = len(keys) if limit is None else min(limit, len(keys))
        node, length, pieces = self._root, 0, []
        while length < limit:
            child = node.children.get(keys[length])
            if child is None:
                break
            common = _common_length(child.key, keys[length:limit])
            if stamp is not None:
                child.last_used = stamp
            pieces.append(child.kv[:, :, :, :common] if common < len(child.key) else child.kv)  # type: ignore[index]
            length += common
            if common < len(child.key):
                break
            node = child
        return length, pieces

    def insert(self, keys: Sequence[Key], kv: torch.Tensor, offset: int = 0) -> None:
        """Store a sequence's entries; `kv` covers `keys[offset:]` (the tokens before are cached already, as `peek`
        said). Shared prefixes are stored once. If the first `offset` tokens were evicted meanwhile, nothing is
        stored (their entries are not at hand)."""
        if kv.shape[3] != len(keys) - offset:
            raise ValueError(f"{kv.shape[3]} entries for {len(keys) - offset} tokens")
        with self._lock:
            self._store(keys, kv, offset, next(self._clock))
            self._evict()

    def _store(self, keys: Sequence[Key], kv: torch.Tensor, offset: int, stamp: int) -> None:
        """`insert`'s walk (lock held): split where `keys` diverge from the tree, add the rest as a leaf."""
        node, done = self._root, 0
        while done < len(keys):
            child = node.children.get(keys[done])
            if child is None:
                if done < offset:
                    return
                leaf = _Node(key=list(keys[done:]), kv=kv[:, :, :, done - offset :].clone(), parent=node,
                             last_used=stamp)
                node.children[keys[done]] = leaf
                self._bytes += leaf.nbytes
                return
            common = _common_length(child.key, keys[done:])
            if common < len(child.key):
                child = self._split(child, common)
            child.last_used = stamp
            node, done = child, done + common

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut `node`'s edge after `at` tokens; return the new upper part (the parent of the rest)."""
        assert node.parent is not None and node.kv is not None
        upper = _Node(key=node.key[:at], kv=node.kv[:, :, :, :at].clone(), parent=node.parent, last_used=node.last_used)
        node.parent.children[node.key[0]] = upper
        node.key = node.key[at:]
        node.kv = node.kv[:, :, :, at:].clone()
        node.parent = upper
        upper.children[node.key[0]] = node
        return upper

    def _evict(self) -> None:
        while self._bytes > self.max_bytes:
            leaves = [n for n in _walk(self._root) if not n.children and n is not self._root]
            if not leaves:
                return
            leaf = min(leaves, key=lambda n: n.last_used)
            assert leaf.parent is not None
            del leaf.parent.children[leaf.key[0]]
            self._bytes -= leaf.nbytes
            self.evictions += 1

    def stored_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def stored_tokens(self) -> int:
        """Tokens with entries in the tree (a prefix shared by many sequences counts once)."""
        with self._lock:
            return sum(len(n.key) for n in _walk(self._root))

    def pin(self, keys: Sequence[Key]) -> None:
        """Mark `keys` (a few-shot prefix every call of a stage shares) as what `clear(keep_pinned=True)` keeps."""
        with self._lock:
            self._pinned.add(tuple(keys))

    def clear(self, keep_pinned: bool = False) -> None:
        """Drop every entry, or with `keep_pinned` every entry but those of the pinned prefixes (`pin`).

        Keeping the few-shot prefixes is what a long-running process looks like to its next question (they stay hot
        in the table) without letting it reuse anything of an earlier question: what a benchmark needs. A pinned
        prefix that was evicted meanwhile is forgotten.
        """
        with self._lock:
            kept = []
            if keep_pinned:
                for keys in self._pinned:
                    length, pieces = self._longest(keys)
                    if length == len(keys):  # (an evicted part: the pin is forgotten)
                        kept.append((keys, torch.cat(pieces, dim=3)))
            self._root = _Node(key=[], kv=None, parent=None)
            self._bytes = 0
            self._pinned = set()
            stamp = next(self._clock)
            for keys, kv in kept:
                self._store(keys, kv, 0, stamp)
                self._pinned.add(keys)


def _common_length(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _walk(node: _Node) -> list[_Node]:
    nodes, stack = [], [node]
    while stack:
        current = stack.pop()
        nodes.append(current)
        stack.extend(current.children.values())
    return nodes
