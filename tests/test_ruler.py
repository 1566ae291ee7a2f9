"""RULER needle-in-a-haystack data: sizing, needles, determinism, scoring, jsonl, templates vs lm-eval, lm-eval tasks.

The tokenizer is a small byte-level BPE trained here on the built-in corpus (no hub, no network)."""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from gdn2_eval.errors import UserError
from gdn2_eval.ruler import (
    ANSWER_PREFIX,
    DEPTHS,
    NEEDLE,
    NOISE,
    TASKS,
    TEMPLATE,
    RulerError,
    builtin_essay,
    generate_samples,
    get_task,
    load_haystack,
    parse_length,
    parse_lengths,
    postprocess_pred,
    read_jsonl,
    render_prompt,
    sample_score,
    split_sentences,
    string_match_all,
    write_jsonl,
)
from gdn2_eval.ruler.generate import assemble_context, join_query
from gdn2_eval.ruler.haystack import BUILTIN_ESSAYS
from gdn2_eval.ruler.words import random_number, random_uuid, random_word, word_lists

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tasks" / "ruler"
ALL_TASKS = list(TASKS)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _lm_eval_ruler_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "ruler"


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE (vocab 600) trained on the built-in corpus and the template, as a PreTrainedTokenizerFast."""
    from gdn2_eval.bpe import train_bpe

    return train_bpe([BUILTIN_ESSAYS.read_text(), TEMPLATE, ANSWER_PREFIX, NOISE], 600, ("<s>", "</s>"))


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ruler_tok")
    tok.save_pretrained(out)
    return out


def prompt_tokens(tok, sample: dict) -> int:
    return len(tok(sample["input"] + sample["answer_prefix"]).input_ids)


def _is_word_key(key: str) -> bool:
    adjectives, nouns = word_lists()
    return any(key.startswith(a + "-") and key[len(a) + 1 :] in set(nouns) for a in adjectives)


def question(sample: dict) -> str:
    """The text after the context: the question and the answer prefix."""
    return sample["input"].rsplit("\n", 1)[1] + sample["answer_prefix"]


# ---------------------------------------------------------------- sizing


@pytest.mark.parametrize("length", [1024, 2048, 4096])
@pytest.mark.parametrize("task", ALL_TASKS)
def test_prompt_plus_answer_fills_target_length(tok, task, length):
    samples = generate_samples(task, length, 4, tok)
    assert len(samples) == 4
    for s in samples:
        total = prompt_tokens(tok, s) + 128
        assert 0.9 * length <= total <= length, (task, length, total)
        assert s["length"] == total and s["length_w_model_temp"] == total
        assert s["max_length"] == length and s["task"] == task


@pytest.mark.parametrize("task", ["niah_single_2", "niah_multikey_3"])
def test_16k_prompt_fits(tok, task):
    for s in generate_samples(task, 16384, 2, tok):
        total = prompt_tokens(tok, s) + 128
        assert 0.9 * 16384 <= total <= 16384
        assert s["haystack"]["units"] > 100


def test_essay_haystack_is_cycled_and_recorded(tok, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A small essay has only a few sentences. It must be repeated to fill a prompt. So it is.")
    s = generate_samples("niah_single_2", 2048, 1, tok, haystack=short)[0]
    assert 0.9 * 2048 <= prompt_tokens(tok, s) + 128 <= 2048
    assert s["haystack"]["passes"] > 10
    assert s["haystack"]["name"] == "file:short.txt"
    assert s["haystack"]["sha256"] == hashlib.sha256(short.read_bytes()).hexdigest()
    count = s["input"].count("It must be repeated to fill a prompt.")
    assert s["haystack"]["passes"] - 1 <= count <= s["haystack"]["passes"]


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_sizing_recovers_from_bad_piece_estimates(tok, monkeypatch, scale):
    """The search ends in range even when the per-unit counts it starts from are far off (full counts correct it)."""
    from gdn2_eval.ruler.tokens import TokenCounter

    original = TokenCounter.count_many
    monkeypatch.setattr(TokenCounter, "count_many", lambda self, texts: [max(1, round(c * scale))
                                                                          for c in original(self, texts)])
    for task in ("niah_single_1", "niah_single_2", "niah_multikey_3"):
        for s in generate_samples(task, 4096, 2, tok):
            assert 0.9 * 4096 <= prompt_tokens(tok, s) + 128 <= 4096


def test_bare_tokenizers_tokenizer_and_bos(tok):
    """A `tokenizers.Tokenizer` gives the same samples as its HF wrapper; a tokenizer that adds BOS has it counted."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bare = tok.backend_tokenizer
    assert generate_samples("niah_multikey_2", 1024, 2, bare) == generate_samples("niah_multikey_2", 1024, 2, tok)
    with_bos = PreTrainedTokenizerFast(tokenizer_object=bare.__class__.from_str(bare.to_str()), bos_token="<s>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", with_bos.convert_tokens_to_ids("<s>"))]
    )
    assert with_bos("a").input_ids[0] == with_bos.bos_token_id
    for s in generate_samples("niah_single_2", 1024, 3, with_bos):
        total = prompt_tokens(with_bos, s) + 128
        assert s["length"] == total and 0.9 * 1024 <= total <= 1024


# ---------------------------------------------------------------- needles, keys, depths


@pytest.mark.parametrize("task", ALL_TASKS)
def test_expected_values_occur_once_in_their_needle(tok, task):
    spec = get_task(task)
    for s in generate_samples(task, 2048, 5, tok):
        assert len(s["outputs"]) == spec.num_queries * spec.num_values
        assert len(set(s["outputs"])) == len(s["outputs"])
        for value in s["outputs"]:
            assert s["input"].count(value) == 1
            assert value not in question(s)
            owner = next(n["key"] for n in s["needles"] if n["value"] == value)
            assert NEEDLE.format(type_needle_v=spec.value_type, key=owner, value=value) in s["input"]
        if spec.value_type == "numbers":
            assert all(re.fullmatch(r"\d{7}", v) for v in s["outputs"])
        if spec.value_type == "uuids":
            assert all(UUID_RE.match(v) for v in s["outputs"])


@pytest.mark.parametrize("task", ALL_TASKS)
def test_keys_needles_and_query(tok, task):
    spec = get_task(task)
    for s in generate_samples(task, 2048, 5, tok):
        keys = s["keys"]
        assert len(keys) == len(set(keys)) == spec.num_keys
        assert len(s["needles"]) == spec.num_keys * spec.num_values
        assert s["query"] == join_query(s["query_keys"])
        assert len(s["query_keys"]) == spec.num_queries and set(s["query_keys"]) <= set(keys)
        asked = question(s)
        for k in keys:  # only the queried keys are asked
            assert (k in asked) == (k in s["query_keys"])
        for n in s["needles"]:
            needle = NEEDLE.format(type_needle_v=spec.value_type, key=n["key"], value=n["value"])
            assert s["input"].count(needle) == 1
            assert n["depth"] in DEPTHS
        if spec.key_type == "words":
            assert all(_is_word_key(k) for k in keys)
        if spec.haystack == "needle":
            # every haystack line is a needle of the same form; the queried key has exactly one line
            lines = s["input"].split("\n")[1:-1]
            needle_re = re.compile(r"^One of the special magic " + spec.value_type + r" for (.+) is: (.+)\.$")
            parsed = [needle_re.match(line) for line in lines]
            assert all(parsed) and len(parsed) > 10
            line_keys = [m.group(1) for m in parsed]
            assert line_keys.count(s["query_keys"][0]) == 1
            assert len(set(line_keys)) == len(line_keys)


def test_multikey_1_has_three_distractor_needles(tok):
    for s in generate_samples("niah_multikey_1", 4096, 5, tok):
        found = re.findall(r"One of the special magic numbers for (\S+) is: (\d{7})\.", s["input"])
        assert len({k for k, _ in found}) == 4
        assert len(s["query_keys"]) == 1 and s["query"] == s["query_keys"][0]
        assert [v for k, v in found if k == s["query"]] == s["outputs"]
        assert "What is the special magic number for " + s["query"] + " mentioned" in s["input"]


def test_depth_is_where_the_needle_sits(tok):
    for task in ("niah_single_1", "niah_single_2"):
        for s in generate_samples(task, 4096, 8, tok):
            assert isinstance(s["depth"], int) and s["depth"] in DEPTHS
            head, tail = s["input"].split("\n", 1)
            context = tail.rsplit("\n", 1)[0]
            pos = context.index(s["outputs"][0]) / len(context)
            assert abs(pos * 100 - s["depth"]) < 6, (task, s["depth"], pos)


def test_multivalue_depths_align_with_outputs(tok):
    for s in generate_samples("niah_multivalue", 2048, 3, tok):
        assert isinstance(s["depth"], list) and len(s["depth"]) == 4
        by_value = {n["value"]: n["depth"] for n in s["needles"]}
        assert s["depth"] == [by_value[v] for v in s["outputs"]]
        assert {n["key"] for n in s["needles"]} == {s["query"]}


def test_singular_and_plural_prompts(tok):
    single = generate_samples("niah_single_1", 1024, 1, tok)[0]
    assert single["input"].startswith("A special magic number is hidden within the following text.")
    expected = f" The special magic number for {single['query']} mentioned in the provided text is"
    assert single["answer_prefix"] == expected
    multi = generate_samples("niah_multivalue", 1024, 1, tok)[0]
    assert multi["input"].startswith("Some special magic numbers are hidden within the following text.")
    assert multi["answer_prefix"].endswith("mentioned in the provided text are")
    uuid_single = generate_samples("niah_single_3", 1024, 1, tok)[0]
    assert "special magic uuid for" in uuid_single["answer_prefix"]


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tok):
    for task in ("niah_single_2", "niah_multikey_2", "niah_multiquery"):
        a = generate_samples(task, 2048, 3, tok, seed=7)
        b = generate_samples(task, 2048, 3, tok, seed=7)
        assert json.dumps(a, ensure_ascii=False).encode() == json.dumps(b, ensure_ascii=False).encode()
        # a sample does not depend on how many are generated
        more = generate_samples(task, 2048, 5, tok, seed=7)
        assert more[:3] == a
        assert generate_samples(task, 2048, 2, tok, seed=7, start_index=3) == more[3:]


def test_different_seeds_differ(tok):
    a = generate_samples("niah_single_1", 1024, 4, tok, seed=1)
    b = generate_samples("niah_single_1", 1024, 4, tok, seed=2)
    assert [s["outputs"] for s in a] != [s["outputs"] for s in b]
    assert [s["keys"] for s in a] != [s["keys"] for s in b]
    assert len({s["outputs"][0] for s in a}) == 4  # samples of one run differ too


# ---------------------------------------------------------------- scoring


def test_scorer_hand_made_cases():
    assert sample_score("The number is 1234567.", ["1234567"]) == 1.0
    assert sample_score("  ABC-def is the answer", ["abc-DEF"]) == 1.0  # case-insensitive
    assert sample_score("x12345678y", ["1234567"]) == 1.0  # substring
    assert sample_score("1234", ["1234567"]) == 0.0
    assert sample_score("1111111 and 3333333", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert sample_score("123\x00" + "4567", ["1234567"]) == 0.0  # control characters become newlines
    assert postprocess_pred("\t 12\x1f34 \n") == "12\n34"
    assert postprocess_pred("a\x07b") == "a\nb"
    assert string_match_all(["1234567", "nope"], [["1234567"], ["7654321"]]) == 0.5
    assert string_match_all(["a b", "c"], [["A", "B"], ["c", "d"]]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        string_match_all([], [])
    with pytest.raises(ValueError):
        string_match_all(["a"], [["a"], ["b"]])


def test_scorer_matches_lm_eval_on_cases():
    """lm-eval's common_utils (imports only transformers) scores the same cases the same."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lm_ruler_common", _lm_eval_ruler_dir() / "common_utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    preds = [" 1234567\n", "The Value IS abc-def\x01", "none", "2222222 1111111"]
    refs = [["1234567"], ["ABC-DEF"], ["1"], ["1111111", "2222222", "3333333"]]
    theirs = mod.string_match_all(mod.postprocess_pred(preds), refs)
    assert string_match_all(preds, refs) == pytest.approx(theirs)


# ---------------------------------------------------------------- jsonl


def test_jsonl_round_trip(tok, tmp_path):
    samples = generate_samples("niah_multiquery", 1024, 3, tok)
    path = write_jsonl(samples, tmp_path / "out" / "niah_multiquery.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(set(json.loads(x)) >= {"index", "input", "outputs", "length", "answer_prefix"}
                                   for x in lines)
    assert read_jsonl(path) == samples


def test_read_nvidia_ruler_jsonl(tmp_path):
    folder = tmp_path / "synthetic" / "4096" / "data" / "niah_single_2"
    folder.mkdir(parents=True)
    record = {"index": 0, "input": "Some text.\nWhat is it?", "outputs": ["1234567"], "length": 4000,
              "length_w_model_temp": 4010, "answer_prefix": " The special magic number is"}
    (folder / "validation.jsonl").write_text(json.dumps(record) + "\n\n" + json.dumps({**record, "index": 1}) + "\n")
    got = read_jsonl(folder / "validation.jsonl")
    assert [r["index"] for r in got] == [0, 1]
    assert got[0]["task"] == "niah_single_2" and got[0]["max_length"] == 4096
    assert read_jsonl(folder / "validation.jsonl", task="x", max_length=8192)[0]["max_length"] == 8192


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"index": 0, "input": "x", "length": 5, "answer_prefix": ""}, "line 2: missing field 'outputs'"),
        ({"index": 0, "input": "x", "outputs": ["1"], "length": 5}, "line 2: missing field 'answer_prefix'"),
        ({"index": 0, "input": "x", "outputs": [], "length": 5, "answer_prefix": ""}, "line 2: field 'outputs'"),
        ({"index": "0", "input": "x", "outputs": ["1"], "length": 5, "answer_prefix": ""}, "line 2: field 'index'"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_line_and_field(tmp_path, bad, message):
    good = {"index": 0, "input": "x", "outputs": ["1"], "length": 5, "answer_prefix": ""}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RulerError, match=re.escape(message)):
        read_jsonl(path)


def test_bad_jsonl_other_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(RulerError, match="line 1: not valid JSON"):
        read_jsonl(path)
    path.write_text("\n")
    with pytest.raises(RulerError, match="no samples"):
        read_jsonl(path)
    with pytest.raises(RulerError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_write_jsonl_writes_nothing_on_bad_sample(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RulerError, match="sample 1: missing field 'outputs'"):
        good = {"index": 0, "input": "x", "outputs": ["1"], "length": 5, "answer_prefix": ""}
        write_jsonl([good, {k: v for k, v in good.items() if k != "outputs"}], path)
    assert not path.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- byte identity with RULER (lm-eval's copy)


def _module_ast(name: str) -> ast.Module:
    return ast.parse((_lm_eval_ruler_dir() / name).read_text())


def _string_constant(tree: ast.Module, name: str) -> str:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found")


def _lm_eval_gen_prefix(type_needle_v: str, query: str, num_q: int, num_v: int) -> str:
    tree = _module_ast("prepare_niah.py")
    node = next(
        d.values[i]
        for d in ast.walk(tree)
        if isinstance(d, ast.Dict)
        for i, k in enumerate(d.keys)
        if isinstance(k, ast.Constant) and k.value == "gen_prefix"
    )
    code = compile(ast.Expression(body=node), "prepare_niah.py", "eval")
    return eval(code, {"type_needle_v": type_needle_v, "query": query, "num_needle_q": num_q, "num_needle_v": num_v})


def test_template_and_needle_are_rulers():
    assert _string_constant(_module_ast("niah_utils.py"), "TEMPLATE") == TEMPLATE
    assert _string_constant(_module_ast("prepare_niah.py"), "NEEDLE") == NEEDLE
    assert NOISE in (_lm_eval_ruler_dir() / "prepare_niah.py").read_text()
    import numpy as np

    assert list(DEPTHS) == [int(x) for x in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_answer_prefix_is_rulers(task):
    spec = get_task(task)
    query = join_query(["red-fox", "blue-owl", "grey-cat", "tan-dog"][: spec.num_queries])
    _, prefix = render_prompt(spec, "ctx", query)
    theirs = _lm_eval_gen_prefix(spec.value_type, query, spec.num_queries, spec.num_values)
    # lm-eval's gen_prefix lacks RULER's leading space and gets it back as the target delimiter
    assert prefix == " " + theirs


class _ScriptedRandom:
    """Stands in for the `random` module inside lm-eval's generate_input_output: returns scripted choices."""

    def __init__(self, samples: list[list[int]]):
        self._samples = list(samples)

    def sample(self, population, k):
        out = self._samples.pop(0)
        assert len(out) == k and all(x in population for x in out)
        return list(out)

    def Random(self, seed):  # noqa: N802 - mirrors random.Random
        return self

    def shuffle(self, items):  # keep the needles' order
        return None


def _lm_eval_generate_input_output(draws: list[str], samples: list[list[int]]):
    tree = _module_ast("prepare_niah.py")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_input_output")
    queue = list(draws)
    ns = {
        "random": _ScriptedRandom(samples),
        "DEPTHS": list(DEPTHS),
        "RANDOM_SEED": 42,
        "generate_random": lambda kind: queue.pop(0),
        "cached_sent_tokenize": split_sentences,
    }
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "prepare_niah.py", "exec"), ns)
    return ns["generate_input_output"], queue


@pytest.mark.parametrize("task", ALL_TASKS)
def test_prompt_is_byte_identical_to_rulers_construction(task):
    """lm-eval's own generate_input_output (RULER's algorithm), fed the same keys, values, depths and haystack,
    builds the same input as ours."""
    spec = get_task(task)
    rng = random.Random(task)
    used: set[str] = set()
    from gdn2_eval.ruler.words import draw_unique

    keys = [draw_unique(spec.key_type, rng, used) for _ in range(spec.num_keys)]
    values = [[draw_unique(spec.value_type, rng, used) for _ in range(spec.num_values)] for _ in keys]
    needles = [NEEDLE.format(type_needle_v=spec.value_type, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    query_idx = list(range(spec.num_keys))[::-1][: spec.num_queries]
    depths = sorted(rng.sample([d for d in DEPTHS if d < 100], len(needles)))
    draws = [x for k, vs in zip(keys, values) for x in (k, *vs)]
    n = 77  # not 100: int(n * depth / 100) then truncates, as RULER's does
    if spec.haystack == "essay":
        units = list(builtin_essay().units[:n])
        haystack = " ".join(units).split(" ")
        scripted = [list(reversed(depths)), query_idx]
        ours_needles = needles
    else:
        positions = [int(n * d / 100) for d in depths]
        scripted = [positions, query_idx]
        if spec.haystack == "noise":
            units, haystack = [NOISE] * n, NOISE
        else:
            pairs = [(draw_unique(spec.key_type, rng, used), draw_unique(spec.value_type, rng, used)) for _ in range(n)]
            units = [NEEDLE.format(type_needle_v=spec.value_type, key=k, value=v) for k, v in pairs]
            draws += [x for pair in pairs for x in pair]
            haystack = NEEDLE
        ours_needles = needles[::-1]  # RULER inserts needles[0] at the deepest of its sorted positions
    fn, left = _lm_eval_generate_input_output(draws, scripted)
    theirs, answers, query = fn(
        len(haystack) if spec.haystack == "essay" else n,
        haystack,
        type_haystack={"noise": "repeat"}.get(spec.haystack, spec.haystack),
        num_needle_k=spec.num_keys,
        type_needle_k=spec.key_type,
        num_needle_v=spec.num_values,
        type_needle_v=spec.value_type,
        template=TEMPLATE,
        num_needle_q=spec.num_queries,
    )
    assert not left
    context = assemble_context(spec.haystack, units, ours_needles, depths)
    ours, _ = render_prompt(spec, context, join_query([keys[i] for i in query_idx]))
    assert query == join_query([keys[i] for i in query_idx])
    assert answers == [v for i in query_idx for v in values[i]]
    assert ours == theirs


# ---------------------------------------------------------------- haystacks, words, sentences


def test_builtin_corpus_identity_and_licence(tok):
    h = builtin_essay()
    assert h.sha256 == hashlib.sha256(BUILTIN_ESSAYS.read_bytes()).hexdigest()
    assert h.name == "builtin:gdn2-eval-essays" and len(h.units) > 300
    assert not re.search(r"\d", h.text)  # no digit: a 7-digit value cannot occur in the haystack by chance
    readme = (BUILTIN_ESSAYS.parent / "README.md").read_text()
    assert "MIT" in readme
    assert len(tok(h.text).input_ids) > 10_000
    s = generate_samples("niah_single_2", 1024, 1, tok)[0]
    assert s["haystack"] == {**h.identity(), "units": s["haystack"]["units"], "passes": 1}


def test_haystack_file_formats(tmp_path):
    text = "First sentence here. Second one follows!\n\nA third? Yes."
    (tmp_path / "essay.txt").write_text(text)
    (tmp_path / "essay.json").write_text(json.dumps({"text": text}))
    (tmp_path / "essay").write_text(text)
    a, b, c = (load_haystack(tmp_path / n) for n in ("essay.txt", "essay.json", "essay"))
    assert a.units == b.units == c.units == ("First sentence here.", "Second one follows!", "A third?", "Yes.")
    assert a.sha256 != b.sha256 and b.sha256 == hashlib.sha256((tmp_path / "essay.json").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("essay.csv", "a,b\n", "unknown format '.csv'"),
        ("essay.json", '{"essays": ["x"]}', 'essay JSON'),
        ("essay.json", "{broken", "not valid JSON"),
        ("essay.txt", "   \n ", "empty"),
        ("missing.txt", None, "does not exist"),
    ],
)
def test_bad_haystack_files(tok, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(RulerError, match=re.escape(message)):
        generate_samples("niah_single_2", 1024, 1, tok, haystack=path)


def test_haystack_option_does_not_change_noise_and_needle_tasks(tok, tmp_path):
    path = tmp_path / "essay.txt"
    path.write_text("Something else entirely. Quite different.")
    for task in ("niah_single_1", "niah_multikey_3"):
        assert generate_samples(task, 1024, 1, tok, haystack=path) == generate_samples(task, 1024, 1, tok)


def test_word_lists_are_wonderwords():
    import wonderwords

    adjectives, nouns = word_lists()
    cats = wonderwords.RandomWord()._categories
    assert set(adjectives) == set(cats["adjectives"]) and set(nouns) == set(cats["nouns"])
    rng = random.Random(0)
    assert all(_is_word_key(random_word(rng)) for _ in range(50))
    assert all(re.fullmatch(r"[1-9]\d{6}", random_number(rng)) for _ in range(50))
    assert all(UUID_RE.match(random_uuid(rng)) for _ in range(50))


def test_sentence_splitter():
    text = ('Mr. Smith went to Washington. He met Dr. Jones at 3.30 p.m. yesterday! Did they talk? "Yes," said '
            'J. R. Doe. The U.S. Army was there. "Quoted end." (Parenthetical start.) e.g. this stays. End')
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        "He met Dr. Jones at 3.30 p.m. yesterday!",
        "Did they talk?",
        '"Yes," said J. R. Doe.',
        "The U.S. Army was there.",
        '"Quoted end."',
        "(Parenthetical start.) e.g. this stays.",
        "End",
    ]
    assert split_sentences("  one\n\ntwo.  ") == ["one two."]
    assert split_sentences("") == []


def test_parse_lengths():
    assert parse_length("4k") == 4096 and parse_length("4K") == 4096 and parse_length("1000") == 1000
    assert parse_lengths("1k, 2k,128k") == [1024, 2048, 131072]
    for bad in ("", "4m", "-1", "0"):
        with pytest.raises(RulerError):
            parse_lengths(bad)


# ---------------------------------------------------------------- bad input


def test_bad_inputs(tok):
    with pytest.raises(RulerError, match="unknown RULER task 'niah_single_9'"):
        generate_samples("niah_single_9", 1024, 1, tok)
    with pytest.raises(RulerError, match="below what niah_multiquery needs.*at least"):
        generate_samples("niah_multiquery", 300, 1, tok)
    with pytest.raises(RulerError, match="leaves no room"):
        generate_samples("niah_single_1", 128, 1, tok)
    with pytest.raises(RulerError, match="positive number"):
        generate_samples("niah_single_1", "4k", 1, tok)
    assert issubclass(RulerError, UserError)


def test_tokenizer_that_cannot_encode_the_template():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    only_unk = PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="<unk>", pad_token="<pad>")
    with pytest.raises(RulerError, match="cannot encode the RULER template"):
        generate_samples("niah_single_1", 1024, 1, only_unk)

    class Broken:
        def __call__(self, *a, **k):
            raise ValueError("no")

    with pytest.raises(RulerError, match="cannot encode the RULER template"):
        generate_samples("niah_single_1", 1024, 1, Broken())
    with pytest.raises(RulerError, match="no tokenizer could be loaded"):
        generate_samples("niah_single_1", 1024, 1, "/nonexistent/tokenizer/dir")


# ---------------------------------------------------------------- lm-eval task definitions


def test_task_yamls_are_short_and_cover_every_task():
    names = sorted(p.stem for p in TASKS_DIR.glob("niah_*.yaml"))
    assert names == sorted(TASKS)
    for name in names:
        text = (TASKS_DIR / f"{name}.yaml").read_text()
        assert len(text.splitlines()) <= 4 and "include: _niah_base.yaml" in text
        assert f"custom_dataset: !function utils.{name}" in text


def test_lm_eval_task_manager_builds_the_dataset(tok, tok_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                     metadata={"pretrained": str(tok_dir), "max_seq_lengths": [1024], "num_samples": 3, "seed": 11})
    assert set(TASKS) <= set(tm.all_tasks)
    loaded = tm.load(["niah_single_2", "niah_multivalue"])["tasks"]
    task = loaded["niah_multivalue"]
    docs = list(task.test_docs())
    assert len(docs) == 3 and docs[0]["max_length"] == 1024
    assert docs[0]["input"] == generate_samples("niah_multivalue", 1024, 1, tok, seed=11)[0]["input"]
    for d in docs:
        assert 0.9 * 1024 <= prompt_tokens(tok, d) + 128 <= 1024
    task.build_all_requests(limit=3, rank=0, world_size=1)
    inst = task.instances[0]
    ctx, gen_kwargs = inst.args[0], inst.args[1]
    assert ctx == inst.doc["input"] + inst.doc["answer_prefix"]
    assert gen_kwargs["max_gen_toks"] == 128 and gen_kwargs["until"] == [] and gen_kwargs["do_sample"] is False
    pred = " " + ", ".join(inst.doc["outputs"][:3]) + " and more"
    assert task.process_results(inst.doc, [pred]) == {"string_match_all": 0.75}
    assert task.config.metric_list[0]["metric"] == "string_match_all"


def test_lm_eval_utils_metadata_keys(tok_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ruler_task_utils", TASKS_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    ds = utils.niah_single_1(tokenizer=str(tok_dir), pretrained="ignored", max_seq_lengths="1k,2k", num_samples="2",
                             version=1.0, dtype="float32")
    assert ds["test"]["max_length"] == [1024, 1024, 2048, 2048]
    with pytest.raises(RulerError, match="pass tokenizer=DIR"):
        utils.niah_single_1(max_seq_lengths=[1024])
    with pytest.raises(RulerError, match="checkpoint file"):
        utils.niah_single_1(pretrained=str(TASKS_DIR / "utils.py"), max_seq_lengths=[1024])
