"""The prefix tree (`gdn2_eval.prefix_tree`): its shape, and that prompts prefilled from snapshots at its branch points
get exactly what they get alone - for the recurrent and the hybrid model, both paths, with snapshots dropped."""

from __future__ import annotations

import random

import pytest
import torch

from gdn2_eval.generation import generate_from, greedy_generate, prefill
from gdn2_eval.prefix_tree import PrefixWalk, build_tree, tree_tokens

from conftest import IMPLS, tiny_model, use_reference_ops


def test_tree_has_a_node_where_prompts_part_or_end():
    prompts = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2], [7, 8], [1, 2, 3, 4]]
    nodes = build_tree(prompts)
    by_depth = {(n.depth, tuple(prompts[n.rep][: n.depth])): n for n in nodes[1:]}
    assert set(by_depth) == {(2, (1, 2)), (3, (1, 2, 3)), (4, (1, 2, 3, 4)), (5, (1, 2, 3, 5, 6)), (2, (7, 8))}
    assert sorted(by_depth[(4, (1, 2, 3, 4))].ends) == [0, 4]  # identical prompts share a node
    assert by_depth[(2, (1, 2))].ends == [2]  # a prompt that is another's prefix ends at an inner node
    assert len(nodes[0].children) == 2
    # every edge once: [1 2] + [3] + [4] + [5 6] + [7 8]
    assert tree_tokens(nodes) == 8
    for n in nodes[1:]:  # each node's prefix is a prefix of every prompt below it
        for i in n.ends:
            assert prompts[i][: n.depth] == prompts[n.rep][: n.depth]


def test_random_trees_cover_every_prompt_once():
    rng = random.Random(0)
    base = [rng.randrange(50) for _ in range(60)]
    prompts = [base[: rng.randrange(1, 60)] + [rng.randrange(50) for _ in range(rng.randrange(0, 5))]
               for _ in range(40)]
    nodes = build_tree(prompts)
    ends = sorted(i for n in nodes for i in n.ends)
    assert ends == list(range(40))
    for n in nodes[1:]:
        assert nodes[n.parent].depth < n.depth
        for i in n.ends:
            assert len(prompts[i]) == n.depth
    assert tree_tokens(nodes) < sum(map(len, prompts))


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    """RULER-like: shared stems, prompts leaving them at different depths, two identical, one a prefix of others."""
    g = random.Random(seed)
    stem = [g.randrange(4, vocab) for _ in range(90)]
    other = [g.randrange(4, vocab) for _ in range(50)]  # a second stem: two snapshots are wanted at once
    tail = lambda: [g.randrange(4, vocab) for _ in range(g.randrange(1, 12))]  # noqa: E731
    prompts = [stem[:d] + tail() for d in (10, 30, 30, 55, 80)] + [other[:d] + tail() for d in (20, 35)]
    return prompts + [list(prompts[1]), stem[:40], [g.randrange(4, vocab) for _ in range(17)]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
@pytest.mark.parametrize(("budget_rows", "round_cost"), [(None, 0), (1, 0), (0, 0), (None, 64), (1, 64),
                                                         (None, 10**9)])
def test_walk_gives_each_prompt_what_it_gets_alone(kind, impl, budget_rows, round_cost, monkeypatch):
    """Final logits equal a prefill of the prompt alone (to float32 rounding), and greedy continuations from the
    walk's cache rows equal greedy generation alone; with room for one snapshot (dropping) or none (recompute); with
    a snapshot at every branch (round cost 0), a plan that weighs rounds against tokens, and no snapshot at all.
    The inference model runs its Triton kernels (interpreted on the CPU) under the first plan; the other plans vary
    only the walk, so there it runs their PyTorch references, 25x faster."""
    if impl == "inference" and (budget_rows, round_cost) != (None, 0):
        use_reference_ops(monkeypatch)
    model = tiny_model(kind, seed=7, impl=impl, local_window=16).float()
    prompts = _prompts(model.config.vocab_size, seed=1)
    row = prefill(model, [prompts[0][:1]], 0, 10**6)[0].nbytes()  # the smallest snapshot (windows grow)
    budget = 10**12 if budget_rows is None else max(1, budget_rows * row)
    walk = PrefixWalk(model, prompts, pad_id=0, chunk_tokens=37, batch_rows=3, budget_bytes=budget,
                      round_cost=round_cost)
    seen = {}
    for done, cache, last in walk:
        outs = generate_from(model, cache, last, 6, cuda_graph=False)
        for r, i in enumerate(done):
            seen[i] = (last[r], outs[r])
    assert sorted(seen) == list(range(len(prompts)))
    for i, p in enumerate(prompts):
        _, alone = prefill(model, [p], 0, 10**6)
        torch.testing.assert_close(seen[i][0], alone[0], rtol=1e-4, atol=1e-4)
        assert seen[i][1] == greedy_generate(model, [p], 6, cuda_graph=False)[0]
    total = sum(map(len, prompts))
    distinct = sum(len(p) for p in {tuple(p) for p in prompts})
    assert tree_tokens(walk.nodes) <= walk.planned_tokens <= distinct
    if round_cost == 0:
        assert walk.planned_tokens == tree_tokens(walk.nodes) < 0.6 * total
    if round_cost == 10**9:
        assert not walk.kept and walk.planned_tokens == distinct
    if budget_rows is None:
        assert walk.tokens_run == walk.planned_tokens
    elif budget_rows == 0:
        assert walk.tokens_run == distinct  # no snapshot fits: each prompt from its start (identical ones once)
    elif walk.kept:
        assert walk.dropped > 0 and walk.planned_tokens < walk.tokens_run  # restarts further up


def test_auto_sharing_runs_the_tree_where_it_saves_enough_tokens():
    """`auto`: the planned walk must save at least TREE_MIN_SAVING tokens (its cost in forwards is in the plan)."""
    from gdn2_eval.prefix_tree import TREE_MIN_SAVING, tree_pays

    n, short = 50, 1000
    assert tree_pays(n * short, n * short - TREE_MIN_SAVING)
    assert not tree_pays(n * short, n * short - TREE_MIN_SAVING + 1)
    assert tree_pays(n * short, n * short // 2)


def test_a_spine_of_branches_runs_in_few_rounds_when_rounds_cost():
    """RULER's tree: one long spine (the haystack) with a prompt branching off every few tokens (a needle at each
    depth). A snapshot at every branch runs one round per branch; a plan that prices rounds runs a few, runs more
    tokens than every branch would and far fewer than no sharing, and stays exact."""
    from gdn2_eval.prefix_tree import plan_snapshots, planned_tokens

    model = tiny_model("recurrent", seed=3).float()
    g = torch.Generator().manual_seed(0)
    spine = torch.randint(3, model.config.vocab_size, (400,), generator=g).tolist()
    prompts = [spine[:d] + torch.randint(3, model.config.vocab_size, (20,), generator=g).tolist()
               for d in range(40, 400, 12)]  # 30 prompts, a branch every 12 tokens
    nodes = build_tree(prompts)
    every, none = tree_tokens(nodes), sum(map(len, prompts))
    for round_cost, most_rounds in ((0, 31), (600, 6)):
        kept = plan_snapshots(nodes, round_cost)
        walk = PrefixWalk(model, prompts, pad_id=0, chunk_tokens=10**6, batch_rows=64, budget_bytes=10**12,
                          round_cost=round_cost)
        assert walk.kept == kept and walk.planned_tokens == planned_tokens(nodes, kept)
        forwards = []
        forward = model.forward
        model.forward = lambda *a, forwards=forwards, forward=forward, **k: forwards.append(1) or forward(*a, **k)
        try:
            got = {i: last[r] for done, _, last in walk for r, i in enumerate(done)}
        finally:
            model.forward = forward
        assert 1 < len(forwards) <= most_rounds, (round_cost, len(forwards))
        assert walk.tokens_run == walk.planned_tokens
        if round_cost:
            assert every < walk.tokens_run < 0.5 * none
            # the plan's cost is the least of its candidates, every-branch included
            assert walk.tokens_run + round_cost * len(forwards) < every + round_cost * 30
        for i, p in enumerate(prompts):
            torch.testing.assert_close(got[i], prefill(model, [p], 0, 10**6)[1][0], rtol=1e-4, atol=1e-4)
