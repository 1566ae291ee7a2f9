"""Prefill each shared prefix once: an exact prefix tree over one call's prompts, with state snapshots at its branches.

A recurrent model's whole memory of a prefix is one fixed-size cache row, so prompts that share a prefix (RULER
samples share their instruction and the haystack up to the first needle; few-shot prompts share their shots) need
that prefix run once: every prompt below a branch point starts from a copy of the cache there. Nothing is
re-tokenised: the tree is built over the token ids the requests already have.

* `build_tree` makes the radix tree of the prompts (nodes where prompts diverge or end);
* `plan_snapshots` picks the branch nodes worth a snapshot: every kept node below another adds one packed forward
  (a round of the walk), and where a forward has a fixed cost (a GPU launches every kernel of the model for it)
  a deep tree of short edges costs more in rounds than it saves in tokens. RULER's tree is a spine with one
  needle's branch at each depth, about 20-40 rounds for 50 samples if every branch is kept;
* `PrefixWalk` runs the planned edges through the model, many edges per packed forward, keeps a snapshot of each
  planned node until its children have started from it, and hands each prompt's final cache row and last logits
  to the caller. Snapshots live within a budget in bytes: when it is full the oldest are dropped and the prompts
  below them run from the nearest kept ancestor (or from the start), which gives the same result with more tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from .generation import prefill

# share_prefix="auto" uses the tree for a call only when it saves at least this many prompt tokens
TREE_MIN_SAVING = 4096
# (On a GPU the walk's fixed cost per forward is weighed by the plan below, not by a length gate: with the plan the
# walk ran the RULER grid's cells at 1K-8K 0.96-1.37x as fast as the unshared prefill on an H100, where a snapshot
# at every branch had run them 0.33-0.95x as fast at 1K-4K on an H200; results/bench/model_notes.md.)
# What one more round (packed forward) of the walk costs, in tokens of prefill: on a GPU ~30-60 ms of launches and
# small kernels for a 1.3B model at ~150K tokens/s (22-30 rounds cost 0.6-1.4 s more per 1K-2K RULER cell,
# results/bench/model_notes.md); on the CPU the tokens dominate
ROUND_COST_TOKENS = {"cuda": 6144, "cpu": 64}
MAX_ROUNDS = 9  # plans considered: at most this many rounds (snapshot levels + 1)


def tree_pays(prompt_tokens: int, tree_run: int) -> bool:
    """Whether `auto` sharing runs the tree for a call whose prompts hold `prompt_tokens` tokens in all, of which the
    planned walk would run `tree_run`."""
    return prompt_tokens - tree_run >= TREE_MIN_SAVING


@dataclass
class Node:
    depth: int  # tokens from the start of the prompt to this node
    parent: int | None
    rep: int  # a prompt through this node (its tokens up to `depth` are the node's prefix)
    children: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # prompts that end exactly here


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def build_tree(prompts: Sequence[Sequence[int]]) -> list[Node]:
    """The radix tree of `prompts`: node 0 is the empty prefix; every other node is where prompts part or one ends.
    Built from the prompts in sorted order and their neighbours' common prefixes, so in O(total tokens)."""
    nodes = [Node(depth=0, parent=None, rep=-1)]
    stack, prev = [0], None
    for i in sorted(range(len(prompts)), key=lambda j: list(prompts[j])):
        p = prompts[i]
        shared = _lcp(prompts[prev], p) if prev is not None else 0
        popped = None
        while nodes[stack[-1]].depth > shared:
            popped = stack.pop()
        top = stack[-1]
        if nodes[top].depth < shared:  # split the edge to `popped` at the common prefix
            nodes.append(Node(depth=shared, parent=top, rep=nodes[popped].rep, children=[popped]))
            mid = len(nodes) - 1
            nodes[top].children[nodes[top].children.index(popped)] = mid
            nodes[popped].parent = mid
            stack.append(mid)
            top = mid
        if len(p) == shared:
            nodes[top].ends.append(i)
        else:
            nodes.append(Node(depth=len(p), parent=top, rep=i, ends=[i]))
            nodes[top].children.append(len(nodes) - 1)
            stack.append(len(nodes) - 1)
        prev = i
    return nodes


def _preorder_nodes(nodes: list[Node]) -> list[int]:
    """The nodes in a depth-first walk from the root (every parent before its children)."""
    out, stack = [], [0]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(nodes[n].children))
    return out


def _preorder(nodes: list[Node]) -> list[int]:
    """Each node's rank in a depth-first walk (children are in prompt order, as `build_tree` appends them)."""
    rank = [0] * len(nodes)
    for k, n in enumerate(_preorder_nodes(nodes)):
        rank[n] = k
    return rank


def planned_parent(nodes: list[Node], kept: set[int], n: int) -> int:
    """`n`'s nearest ancestor in `kept` (0: the start): where a walk with snapshots at `kept` runs `n` from."""
    a = nodes[n].parent
    while a and a not in kept:
        a = nodes[a].parent
    return a


def tree_tokens(nodes: list[Node]) -> int:
    """Tokens a walk of the tree runs through the model when no snapshot is dropped: every edge once."""
    return sum(n.depth - nodes[n.parent].depth for n in nodes[1:])


def plan_snapshots(nodes: list[Node], round_cost: int) -> set[int]:
    """The branch nodes to snapshot: every branch, or of all choices with at most L snapshots on any path from the
    start to a prompt's end (L + 1 rounds, L + 1 <= MAX_ROUNDS), the one that minimises tokens run +
    `round_cost` x rounds. Exact whatever the choice (a prompt below an unplanned node starts from the nearest
    planned ancestor, or from the start); `round_cost` 0 keeps every branch (fewest tokens)."""
    internal = {n for n in range(1, len(nodes)) if nodes[n].children}
    branches_above = [0] * len(nodes)  # planned-if-all branches on the path to each node, itself included
    for n in _preorder_nodes(nodes)[1:]:
        branches_above[n] = branches_above[nodes[n].parent] + (n in internal)
    all_rounds = max(branches_above, default=0) + 1
    if not round_cost or not internal or len(nodes) * all_rounds * MAX_ROUNDS > 2_000_000 or all_rounds > 300:
        return internal  # not asked for, or a plan too large to search: keep every branch

    @cache
    def g(n: int, start: int, levels: int) -> int:
        """Fewest tokens to run `n`'s subtree (n included) when its nearest snapshot is at depth `start`."""
        node = nodes[n]
        edge = node.depth - start
        skip = (edge if node.ends else 0) + sum(g(c, start, levels) for c in node.children)
        if levels == 0 or n not in internal:
            return skip
        return min(skip, edge + sum(g(c, node.depth, levels - 1) for c in node.children))

    def tokens(levels: int) -> int:
        return sum(g(c, 0, levels) for c in nodes[0].children)

    levels = min(range(MAX_ROUNDS), key=lambda L: tokens(L) + round_cost * (L + 1))
    if tree_tokens(nodes) + round_cost * all_rounds <= tokens(levels) + round_cost * (levels + 1):
        return internal
    kept: set[int] = set()
    todo = [(c, 0, levels) for c in nodes[0].children]
    while todo:  # the choices that reach g's minimum, top down
        n, start, left = todo.pop()
        node = nodes[n]
        skip = (node.depth - start if node.ends else 0) + sum(g(c, start, left) for c in node.children)
        if left and n in internal and g(n, start, left) < skip:
            kept.add(n)
            todo.extend((c, node.depth, left - 1) for c in node.children)
        else:
            todo.extend((c, start, left) for c in node.children)
    return kept


def planned_tokens(nodes: list[Node], kept: set[int]) -> int:
    """Tokens a walk runs with snapshots at `kept` (none dropped): each planned node's and each prompt end's edge
    from its nearest planned ancestor."""
    return sum(nodes[n].depth - nodes[planned_parent(nodes, kept, n)].depth
               for n in range(1, len(nodes)) if n in kept or nodes[n].ends)


def default_budget(device: torch.device) -> int:
    """Bytes for snapshots: half the free memory of the GPU, or a quarter of the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class PrefixWalk:
    """Runs the tree of `prompts` through `model` (one with `new_cache` and a `GDN2Cache`-like cache) and yields,
    for batches of prompts, `(prompt indices, cache of their rows, last logits [rows, vocab])`, each prompt exactly
    as if it had been prefilled alone. `tokens_run` counts the tokens that went through the model."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], pad_id: int, chunk_tokens: int, batch_rows: int,
                 budget_bytes: int, check: Callable[[torch.Tensor], None] | None = None,
                 round_cost: int | None = None) -> None:
        """`round_cost`: tokens one more packed forward is worth (`plan_snapshots`); None: the model's device's
        (`ROUND_COST_TOKENS`); 0: snapshot every branch."""
        self.model, self.prompts, self.pad_id = model, prompts, pad_id
        self.chunk_tokens, self.batch_rows, self.budget = chunk_tokens, max(1, batch_rows), budget_bytes
        self.check = check
        self.nodes = build_tree(prompts)
        if round_cost is None:
            round_cost = ROUND_COST_TOKENS.get(torch.device(model.device).type, ROUND_COST_TOKENS["cuda"])
        self.kept = plan_snapshots(self.nodes, round_cost)
        # the planned tree: each node that runs (a planned snapshot or a prompt's end) under its nearest planned
        # ancestor; the others are never run on their own
        self.up = {n: planned_parent(self.nodes, self.kept, n) for n in range(1, len(self.nodes))
                   if n in self.kept or self.nodes[n].ends}
        self.below: dict[int, list[int]] = {n: [] for n in [0, *self.kept]}
        for n, a in self.up.items():
            self.below[a].append(n)
        self.planned_tokens = planned_tokens(self.nodes, self.kept)
        self.order = _preorder(self.nodes)
        self.tokens_run = 0
        self.snapshots: dict[int, object] = {}  # node -> 1-row cache after its prefix, oldest first
        self.row_bytes: int | None = None
        self.dropped = 0  # snapshots evicted or never kept for want of room

    def _start(self, node: int) -> tuple[int, object | None]:
        """The nearest ancestor of `node` with a snapshot (or the root, 0) and that snapshot."""
        a = self.nodes[node].parent
        while a and a not in self.snapshots:
            a = self.nodes[a].parent
        return a, self.snapshots.get(a) if a else None

    def _keep(self, node: int, snap) -> None:
        self.row_bytes = max(self.row_bytes or 1, snap.nbytes())
        while self.snapshots and (len(self.snapshots) + 1) * self.row_bytes > self.budget:
            del self.snapshots[next(iter(self.snapshots))]  # its prompts start further up: more tokens, same result
            self.dropped += 1
        if self.row_bytes <= self.budget:
            self.snapshots[node] = snap
        else:
            self.dropped += 1  # larger than the whole budget: not kept

    def _release(self, node: int) -> None:
        self.snapshots.pop(node, None)

    def _run(self, batch: list[int]) -> tuple[object, torch.Tensor]:
        """The edges of `batch` (nodes) in one chunked prefill, each row from its start's snapshot."""
        starts = [self._start(n) for n in batch]
        segs = [self.prompts[self.nodes[n].rep][self.nodes[a].depth : self.nodes[n].depth]
                for n, (a, _) in zip(batch, starts)]
        self.tokens_run += sum(len(s) for s in segs)
        snaps = [snap for _, snap in starts]
        cache = None if snaps[0] is None else type(snaps[0]).cat(snaps)  # `_batches` never mixes the two
        cache, last = prefill(self.model, segs, self.pad_id, self.chunk_tokens, cache=cache)
        if self.check is not None:
            self.check(last)
        return cache, last

    def _batches(self, frontier: list[int]) -> Iterator[list[int]]:
        """Up to `batch_rows` nodes at a time, in prompt order (so a subtree finishes, and frees its snapshots,
        before the next starts); rows from the root and rows from snapshots run in separate forwards."""
        while frontier:
            frontier.sort(key=self.order.__getitem__)
            from_root = self._start(frontier[0])[1] is None
            batch = [n for n in frontier if (self._start(n)[1] is None) == from_root][: self.batch_rows]
            for n in batch:
                frontier.remove(n)
            yield batch

    def __iter__(self) -> Iterator[tuple[list[int], object, torch.Tensor]]:
        frontier = list(self.below[0])
        pending = {n: len(ns) for n, ns in self.below.items()}  # planned children not yet started
        if self.row_bytes is None:  # what one snapshot costs, from a one-token prefill (windows grow; see _keep)
            first = self.prompts[self.nodes[frontier[0]].rep][:1] if frontier else []
            self.row_bytes = prefill(self.model, [first], self.pad_id, 1)[0].nbytes() if first else 1
        for batch in self._batches(frontier):
            if self.row_bytes > self.budget:  # no snapshot fits: inner nodes are not worth running on their own
                inner = [n for n in batch if not self.nodes[n].ends]
                for n in inner:
                    batch.remove(n)
                    frontier.extend(self.below[n])
                    pending[self.up[n]] -= 1
                if not batch:
                    continue
            cache, last = self._run(batch)
            for n in batch:  # a parent's snapshot is no longer needed once all its children have started from it
                parent = self.up[n]
                pending[parent] -= 1
                if parent and pending[parent] == 0:
                    self._release(parent)
            done, rows = [], []
            for r, n in enumerate(batch):
                node = self.nodes[n]
                if n in self.kept:
                    self._keep(n, cache.rows(torch.tensor([r], device=last.device)))
                    frontier.extend(self.below[n])
                for i in node.ends:  # identical prompts share the row
                    done.append(i)
                    rows.append(r)
            if done:
                idx = torch.tensor(rows, device=last.device)
                yield done, cache.rows(idx), last[idx]


def join(results: list[tuple[list[int], object, torch.Tensor]]) -> tuple[list[int], object, torch.Tensor]:
    """Several of a walk's `(prompt indices, cache rows, last logits)` as one batch."""
    caches = [c for _, c, _ in results]
    return [i for done, _, _ in results for i in done], type(caches[0]).cat(caches), torch.cat([x for *_, x in results])
