"""Fixtures shared by the tests: tiny configs, a tokenizer built here, and checkpoints in the authors' layout."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels can only run in Triton's interpreter; it must be chosen before any module defines
# a kernel (the project's or a dependency's), so here, before anything imports triton.
if not torch.cuda.is_available() and os.environ.get("GDN2_TRITON_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gdn2_eval  # noqa: F401  (registers the model type)
from gdn2_eval import GDN2Config, GDN2ForCausalLM
from gdn2_eval.kernels.fla_configs import use_pinned_configs

# On a GPU, fla reads the launch configurations kept in the repository instead of autotuning every tiny test shape
# (a no-op without CUDA); as in the loaders, before anything imports fla's kernels.
use_pinned_configs()

# Where tests of the project's own Triton kernels put their tensors: the interpreter reads CPU tensors, compiled
# kernels only GPU ones.
KERNEL_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"


def _one_launch_config() -> None:
    """GPU tests check numbers, not speed: every autotuned Triton kernel (fla's, for shapes and dtypes no pinned
    entry covers) runs its first valid configuration instead of compiling and timing each candidate, which made the
    GPU suite spend minutes autotuning tiny shapes."""
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]


if torch.cuda.is_available():
    _one_launch_config()

# A hybrid in the authors' field names: GQA (2 query groups for 4 heads), window smaller than the test prompts.
TINY_HYBRID_FIELDS = dict(
    n_layer=4,
    n_embd=64,
    n_head=4,
    n_query_groups=2,
    gdn2_per_layer=2,
    gdn2_num_heads=2,
    gdn2_head_dim=16,
    intermediate_size=96,
    local_window=8,
    vocab_size=250,
    padding_multiple=64,
    norm_eps=1e-5,
)
TINY_RECURRENT_FIELDS = dict(
    n_layer=2,
    n_embd=64,
    n_head=4,
    gdn2_per_layer=1,
    gdn2_num_heads=4,
    gdn2_head_dim=16,
    intermediate_size=96,
    vocab_size=256,
    padding_multiple=64,
)


def tiny_config(kind: str = "hybrid", **overrides) -> GDN2Config:
    fields = TINY_HYBRID_FIELDS if kind == "hybrid" else TINY_RECURRENT_FIELDS
    return GDN2Config.from_authors(dict(fields), **{"kernel": "torch", **overrides})


IMPLS = ("reference", "inference")  # the readable model, and the packed and fused one built from it


def tiny_model(kind: str = "hybrid", seed: int = 0, impl: str = "reference", **overrides) -> GDN2ForCausalLM:
    torch.manual_seed(seed)
    model = GDN2ForCausalLM(tiny_config(kind, **overrides)).eval()
    # Random gates far from their init, and biases away from their zero init, so that every gate, decay and bias
    # matters in comparisons.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", ".bias")):
                p.copy_(torch.randn_like(p) * 0.5)
    if impl == "inference":
        from gdn2_eval.inference import GDN2InferenceForCausalLM

        return GDN2InferenceForCausalLM.from_reference(model)
    return model


def use_reference_ops(monkeypatch) -> None:
    """Run the inference model's fused operators as their PyTorch references (`kernels/*/naive.py`), not through
    Triton's interpreter, for the rest of a test: for tests of what is built around the operators (tree walks, a
    bench's bookkeeping), repeated over many settings. The Triton kernels are checked against those references in
    their own tests, and the inference model with them in `test_inference.py` and `test_model.py`."""
    from gdn2_eval.kernels.fused import fused_ops

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert fused_ops("cpu").kind == "torch"


def authors_state_dict(fields: dict, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """A random state dict laid out as the authors' checkpoints are (spec section 5), built from the spec alone."""
    g = torch.Generator().manual_seed(seed)
    D, L = fields["n_embd"], fields["n_layer"]
    H, dk = fields["gdn2_num_heads"], fields["gdn2_head_dim"]
    dv = dk * fields.get("gdn2_expand_v", 1)
    nh = fields["n_head"]
    ng = fields.get("n_query_groups") or nh
    hd = D // nh
    pm = fields.get("padding_multiple", 64)
    V = math.ceil(fields["vocab_size"] / pm) * pm
    inter = fields["intermediate_size"]

    def r(*shape, scale=None):
        scale = scale if scale is not None else 1 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "transformer.wte.weight": r(V, D, scale=1.0),
        "transformer.ln_f.weight": 1 + 0.1 * r(D, scale=1.0),
        "lm_head.weight": r(V, D),
    }
    for i in range(L):
        p = f"transformer.h.{i}."
        sd[p + "norm_1.weight"] = 1 + 0.1 * r(D, scale=1.0)
        sd[p + "norm_2.weight"] = 1 + 0.1 * r(D, scale=1.0)
        for n, shape in (("w1", (inter, D)), ("w2", (inter, D)), ("w3", (D, inter))):
            sd[p + f"mlp.swiglu.{n}.weight"] = r(*shape)
        if i % fields.get("gdn2_per_layer", 1) == 0:
            a = p + "attn."
            sd[a + "q_proj.weight"], sd[a + "k_proj.weight"] = r(H * dk, D), r(H * dk, D)
            sd[a + "v_proj.weight"] = r(H * dv, D)
            for n, c in (("q", H * dk), ("k", H * dk), ("v", H * dv)):
                sd[a + f"{n}_conv1d.weight"] = r(c, 1, 4, scale=0.5)
            sd[a + "f_proj.0.weight"], sd[a + "f_proj.1.weight"] = r(dv, D), r(H * dk, dv)
            sd[a + "b_proj.weight"], sd[a + "w_proj.weight"] = r(H * dk, D), r(H * dv, D)
            sd[a + "A_log"] = torch.rand(H, generator=g) * 2
            sd[a + "dt_bias"] = r(H * dk, scale=0.5)
            sd[a + "g_proj.0.weight"], sd[a + "g_proj.1.weight"] = r(dv, D), r(H * dv, dv)
            sd[a + "g_proj.1.bias"] = r(H * dv, scale=0.1)
            sd[a + "o_norm.weight"] = 1 + 0.1 * r(dv, scale=1.0)
            sd[a + "o_proj.weight"] = r(D, H * dv)
        else:
            sd[p + "attn.attn.weight"] = r((nh + 2 * ng) * hd, D)
            sd[p + "attn.proj.weight"] = r(D, nh * hd)
    return {prefix + k: v for k, v in sd.items()}


def save_authors_checkpoint(path: Path, state: dict) -> Path:
    torch.save({"model": state, "optimizer": None, "iter_num": 10}, path)
    return path


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A word-level tokenizer built in the test (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(200)] + ["the", "a", "magic", "number"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out = tmp_path / "tokenizer"
    fast.save_pretrained(out)
    return out


def pytest_configure(config):
    """lm-eval's task-index map (`gdn2_eval.task_index`) is cached for the session, not in the user's home."""
    if not os.environ.get("GDN2_EVAL_CACHE"):
        import tempfile

        os.environ["GDN2_EVAL_CACHE"] = tempfile.mkdtemp(prefix="gdn2-eval-cache-")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the network: connections to anything but this machine fail at once, and processes the test
    starts see the Hugging Face hub as offline."""
    import socket

    from gdn2_eval import names

    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network blocked in tests: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names._reachable.cache_clear()
    yield
    names._reachable.cache_clear()


def pytest_collection_modifyitems(config, items):
    """GPU tests (marker `gpu`) run on a CUDA machine only; elsewhere they are skipped with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer_dir) -> Path:
    """A tiny hybrid GDN-2 HF directory with the word-level tokenizer (vocab 208 fits the 256-row embedding)."""
    from transformers import AutoTokenizer

    out = tmp_path / "tiny-gdn2"
    tiny_model("hybrid", seed=3).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def words(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, 200, (n,), generator=g))


def write_user_tasks(folder: Path, n_mc: int = 12, n_docs: int = 6, doc_words: int = 120) -> Path:
    """Two lm-eval tasks defined in a user directory, reading JSON lines made here: a multiple-choice task and a
    document perplexity task."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "mc.jsonl").open("w") as f:
        for i in range(n_mc):
            doc = {"question": words(20, i), "choices": [words(3, 100 + i), words(4, 200 + i)], "label": i % 2}
            f.write(json.dumps(doc) + "\n")
    with (folder / "docs.jsonl").open("w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": words(doc_words, 300 + i)}) + "\n")
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + head.format(folder / "mc.jsonl")
        + 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (folder / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n" + head.format(folder / "docs.jsonl")
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
    )
    return folder


def bpe_tokenizer(vocab_size: int = 600):
    """A byte-level BPE trained here on the built-in RULER corpus and templates (no hub)."""
    from gdn2_eval.bpe import train_bpe
    from gdn2_eval.ruler import ANSWER_PREFIX, NOISE, TEMPLATE, builtin_essay

    return train_bpe([builtin_essay().text, TEMPLATE, ANSWER_PREFIX, NOISE], vocab_size)


def cli(*args):
    """Invoke the `gdn2-eval` command line in-process (arguments may be paths)."""
    from typer.testing import CliRunner

    from gdn2_eval.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def summary(path) -> list[dict]:
    """The rows of a run's summary.csv."""
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def token_requests(n: int = 6, seed: int = 0, context: tuple[int, int] = (20, 90), vocab: int = 600) -> list:
    """(None, context, continuation) token requests of varied lengths, two continuations per context."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ctx = torch.randint(3, vocab, (int(torch.randint(*context, (1,), generator=g)),), generator=g).tolist()
        for _ in range(2):
            out.append((None, ctx, torch.randint(3, vocab, (int(torch.randint(1, 9, (1,), generator=g)),),
                                                   generator=g).tolist()))
    return out


def branching_requests(trunk: int, mids: tuple[int, ...], tails: tuple[int, ...], seed: int = 3) -> list:
    """Requests whose contexts share a trunk, then one of `mids`, then tails of the given lengths (and the trunk
    alone): a prefix tree with branches at two depths."""
    g = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.randint(3, 600, (n,), generator=g).tolist()

    shared, middles = rand(trunk), [rand(m) for m in mids]
    contexts = [shared + m + rand(k) for m in middles for k in tails] + [shared]
    return [(None, c, rand(int(torch.randint(1, 6, (1,), generator=g)))) for c in contexts]


def whole_pass(model, requests) -> list[float]:
    """Each request's log-likelihood from one forward of the model over context + continuation, alone."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for _, ctx, cont in requests:
            lp = torch.log_softmax(model(torch.tensor([ctx + cont], device=device)).logits[0].double(), -1)
            out.append(sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def prefill_and_step_both(ref, fused, steps: int, before_steps=None):
    """Prefill three prompts into both models, then `steps` greedy one-token steps on each cache, asserting that the
    fused model's step logits are the reference's. `before_steps()` runs between prefill and the steps. Returns the
    two caches (reference, fused) and the prompts."""
    from gdn2_eval.generation import prefill

    g = torch.Generator().manual_seed(10)
    prompts = [torch.randint(4, 250, (n,), generator=g).tolist() for n in (5, 19, 12)]
    cache_r, last_r = prefill(ref, prompts, 0, chunk_tokens=32)
    cache_f, last_f = prefill(fused, prompts, 0, chunk_tokens=32)
    torch.testing.assert_close(last_f, last_r, atol=3e-5, rtol=3e-5)
    if before_steps is not None:
        before_steps()
    token = last_r.argmax(-1)
    with torch.no_grad():
        for _ in range(steps):
            want = ref(token[:, None], past_key_values=cache_r, use_cache=True).logits[:, -1]
            got = fused(token[:, None], past_key_values=cache_f, use_cache=True).logits[:, -1]
            torch.testing.assert_close(got, want, atol=3e-5, rtol=3e-5)
            token = want.argmax(-1)
    return cache_r, cache_f, prompts
