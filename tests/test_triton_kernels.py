"""The GDN-2 Triton kernels (`kernels/gdn2/chunk.py`, `fused_recurrent.py`) against the float64 references.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported), and compiled where
a GPU is present (GDN2_TRITON_TEST_DEVICE=cpu|cuda chooses).
"""

import os

import torch  # noqa: E402

# compiled on a GPU where there is one (an interpreter set here would also take over every other test module's
# kernels in the same session, `pytest -m gpu` included), interpreted on the CPU
DEVICE = os.environ.get("GDN2_TRITON_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import warnings  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

if DEVICE == "cpu":
    # If another module imported our kernels before TRITON_INTERPRET was set, re-create them as interpreted ones.
    import importlib  # noqa: E402
    import sys  # noqa: E402

    for _name in ("utils", "chunk", "fused_recurrent"):
        if f"gdn2_eval.kernels.gdn2.{_name}" in sys.modules:
            importlib.reload(sys.modules[f"gdn2_eval.kernels.gdn2.{_name}"])

from gdn2_eval.kernels.dispatch import gdn2_recurrence  # noqa: E402
from gdn2_eval.kernels.gdn2 import chunk as chunk_mod  # noqa: E402
from gdn2_eval.kernels.gdn2.chunk import chunk_gdn2_fwd  # noqa: E402
from gdn2_eval.kernels.gdn2.fused_recurrent import fused_recurrent_gdn2_fwd  # noqa: E402
from gdn2_eval.kernels.gdn2.naive import naive_recurrent_gdn2, naive_varlen  # noqa: E402
from gdn2_eval.kernels.gdn2.utils import _check_inputs  # noqa: E402

# The fast diagonal-block path may overflow in entries that are masked away afterwards; numpy warns about it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

FNS = {"chunk": chunk_gdn2_fwd, "recurrent": fused_recurrent_gdn2_fwd}
FP32_TOL = 2e-5  # max |err| / max |ref| for fp32 inputs
BF16_TOL = 3e-2  # bf16 inputs, bf16 intermediates (the interpreter truncates to bf16 instead of rounding)


def make(B=1, T=37, H=2, K=32, V=16, HK=None, dtype=torch.float32, g_range=(-1.0, 0.0), seed=0):
    """q, k, g, b with HK key heads (default H) and v, w with H value heads."""
    gen = torch.Generator().manual_seed(seed)
    HK = HK or H
    q = torch.randn(B, T, HK, K, generator=gen)
    k = torch.randn(B, T, HK, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    lo, hi = g_range
    g = torch.rand(B, T, HK, K, generator=gen) * (hi - lo) + lo
    b = 2 * torch.rand(B, T, HK, K, generator=gen)
    w = torch.rand(B, T, H, V, generator=gen)
    q, k, v, b, w = (x.to(dtype).to(DEVICE) for x in (q, k, v, b, w))
    return q, k, v, g.to(DEVICE), b, w


def state(N, H, K, V, seed=1):
    return (torch.randn(N, H, K, V, generator=torch.Generator().manual_seed(seed)) * 0.5).to(DEVICE)


def rel_err(x, ref):
    assert x is not None
    x = x.double().cpu()
    ref = ref.double().cpu()
    assert torch.isfinite(x).all(), "non-finite values in the output"
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("T", [1, 37, 64, 130])
def test_matches_reference_fp32(fn, T):
    ins = make(B=2, T=T)
    h0 = state(2, 2, 32, 16)
    o, ht = FNS[fn](*ins, initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    assert o.dtype == torch.float32 and o.shape == ref_o.shape
    assert ht.dtype == torch.float32 and ht.shape == ref_h.shape
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


@pytest.mark.parametrize("fn", FNS)
def test_no_initial_state_no_final_state(fn):
    ins = make(T=70, K=16, V=32)
    o, ht = FNS[fn](*ins)
    assert ht is None
    assert rel_err(o, naive_recurrent_gdn2(*ins)[0]) < FP32_TOL


@pytest.mark.parametrize("fn", FNS)
def test_without_l2norm_and_custom_scale(fn):
    q, k, v, g, b, w = make(T=40, K=16, V=16)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True))
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True))
    o, ht = FNS[fn](q, k, v, g, b, w, scale=0.3, output_final_state=True, use_qk_l2norm=False)
    ref_o, ref_h = naive_recurrent_gdn2(q, k, v, g, b, w, scale=0.3, use_qk_l2norm=False)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


@pytest.mark.parametrize("fn", FNS)
def test_varlen_three_sequences(fn):
    bounds = [0, 37, 37, 101, 150] if fn == "chunk" else [0, 5, 5, 12, 20]  # includes an empty sequence
    T = bounds[-1]
    ins = make(T=T, K=32, V=16)
    cu = torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    h0 = state(4, 2, 32, 16)
    o, ht = FNS[fn](*ins, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    ref_o, ref_h = naive_varlen(naive_recurrent_gdn2, *ins, cu_seqlens=cu.cpu(), initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL
    # the empty sequence passes its initial state through untouched
    assert torch.equal(ht[1].cpu(), h0[1].cpu())


@pytest.mark.parametrize("fn", FNS)
def test_grouped_value_heads_equal_repetition(fn):
    T = 70 if fn == "chunk" else 9
    q, k, v, g, b, w = make(T=T, H=4, HK=2, K=16, V=32)
    h0 = state(1, 4, 16, 32)
    o, ht = FNS[fn](q, k, v, g, b, w, initial_state=h0, output_final_state=True)
    rep = [x.repeat_interleave(2, dim=2) for x in (q, k, g, b)]
    ref_o, ref_h = naive_recurrent_gdn2(rep[0], rep[1], v, rep[2], rep[3], w, initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL
    o2, _ = FNS[fn](rep[0], rep[1], v, rep[2], rep[3], w, initial_state=h0)
    assert rel_err(o2, ref_o) < FP32_TOL


@pytest.mark.parametrize("fn", FNS)
def test_bf16_inputs(fn):
    T = 130 if fn == "chunk" else 20
    ins = make(B=2, T=T, K=32, V=32, dtype=torch.bfloat16)
    h0 = state(2, 2, 32, 32)
    o, ht = FNS[fn](*ins, initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    assert rel_err(o, ref_o) < BF16_TOL
    assert rel_err(ht, ref_h) < BF16_TOL


def test_fp16_inputs():
    ins = make(T=80, K=16, V=16, dtype=torch.float16)
    o, ht = chunk_gdn2_fwd(*ins, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins)
    assert o.dtype == torch.float16
    assert rel_err(o, ref_o) < 5e-3
    assert rel_err(ht, ref_h) < 5e-3


GATES = {
    "strong_uniform": (-60.0, -40.0),  # decay ~ e^-50 per token: every diagonal block takes the exact path
    "mixed": (-50.0, 0.0),
    "at_chunk_limit": (-1.85, -1.85),  # span 64 * 1.85 = 118.4 per chunk: the whole-chunk reference near its limit
    "past_chunk_limit": (-1.9, -1.9),  # span 121.6: just past it, the sub-chunk references
    "at_fast_limit": (-4.9, -4.9),  # span 16 * 4.9 = 78.4 per 16-token sub-chunk: the fast path near its limit
    "past_fast_limit": (-5.1, -5.1),  # span 81.6: just past it, the exact path
    "weak": (-1e-6, 0.0),  # decay ~ 1
    "none": (0.0, 0.0),  # no decay at all
}


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("gates", GATES)
def test_decay_extremes(fn, gates):
    T = 100 if fn == "chunk" else 12
    ins = make(T=T, K=32, V=32, g_range=GATES[gates])
    h0 = state(1, 2, 32, 32)
    o, ht = FNS[fn](*ins, initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


def test_one_huge_decay_among_small_ones():
    # a single token that wipes the state, surrounded by decays ~ 1: only the exact diagonal path is right here
    q, k, v, g, b, w = make(T=64, K=16, V=16, g_range=(-1e-3, 0.0))
    g[:, 20] = -80.0
    o, ht = chunk_gdn2_fwd(q, k, v, g, b, w, initial_state=state(1, 2, 16, 16), output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(q, k, v, g, b, w, initial_state=state(1, 2, 16, 16))
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


def test_key_tiles_on_different_paths():
    # K = 64 is two key tiles of 32 channels: slow decays in the first (whole-chunk reference), fast ones in the
    # second (sub-chunk references); both add into the same intra-chunk matrices
    q, k, v, g, b, w = make(T=150, K=64, V=16, g_range=(-0.1, 0.0))
    g[..., 32:] = -3.0 - torch.rand(g[..., 32:].shape)
    h0 = state(1, 2, 64, 16)
    o, ht = chunk_gdn2_fwd(q, k, v, g, b, w, initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(q, k, v, g, b, w, initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


def test_sub_chunk_references_alone(monkeypatch):
    # with the whole-chunk reference switched off, decays it would take go through the sub-chunk path and agree
    monkeypatch.setitem(chunk_mod.TUNE, "intra_chunk_ref", 0)
    ins = make(T=100, K=32, V=32, g_range=(-1.0, 0.0))
    o, ht = chunk_gdn2_fwd(*ins, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins)
    assert rel_err(o, ref_o) < FP32_TOL and rel_err(ht, ref_h) < FP32_TOL


def test_chunk_and_recurrent_agree():
    ins = make(B=2, T=90, K=16, V=32, g_range=(-3.0, 0.0))
    h0 = state(2, 2, 16, 32)
    oc, hc = chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=True)
    orr, hr = fused_recurrent_gdn2_fwd(*ins, initial_state=h0, output_final_state=True)
    assert rel_err(oc, orr) < FP32_TOL
    assert rel_err(hc, hr) < FP32_TOL


def test_segmented_schedule_matches(monkeypatch):
    # the overlapped long-input schedule (segments of chunks, state handed over between them), forced on
    ins = make(B=2, T=150, K=16, V=16)
    h0 = state(2, 2, 16, 16)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    monkeypatch.setitem(chunk_mod.TUNE, "segment_chunks", 1)
    for ofs in (True, False):
        o, ht = chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=ofs)
        assert rel_err(o, ref_o) < FP32_TOL
        assert (ht is not None) == ofs
        if ofs:
            assert rel_err(ht, ref_h) < FP32_TOL


@pytest.mark.parametrize("gates", ["mixed", "weak"])
def test_forward_substitution_variant(gates, monkeypatch):
    # the other solve of the diagonal blocks (row-by-row forward substitution instead of the default
    # (I - T)(I + T^2)(I + T^4)(I + T^8)), a tuning knob
    monkeypatch.setitem(chunk_mod.TUNE, "intra_inv", 0)
    ins = make(T=100, K=16, V=32, g_range=GATES[gates])
    h0 = state(1, 2, 16, 32)
    o, ht = chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


def test_noncontiguous_inputs():
    q, k, v, g, b, w = make(T=50, K=16, V=16)
    # same values, transposed storage
    nc = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, g, b, w)]
    assert not nc[0].is_contiguous()
    h0 = state(1, 2, 16, 16).transpose(-1, -2).contiguous().transpose(-1, -2)
    ref_o, ref_h = naive_recurrent_gdn2(q, k, v, g, b, w, initial_state=h0)
    for fn in FNS.values():
        o, ht = fn(*nc, initial_state=h0, output_final_state=True)
        assert rel_err(o, ref_o) < FP32_TOL
        assert rel_err(ht, ref_h) < FP32_TOL


def test_inplace_final_state():
    ins = make(B=2, T=1, K=32, V=32)
    h0 = state(2, 2, 32, 32)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0.clone())
    buf = h0.clone()
    o, ht = fused_recurrent_gdn2_fwd(*ins, initial_state=buf, inplace_final_state=True)
    assert ht is buf
    assert rel_err(buf, ref_h) < FP32_TOL
    assert rel_err(o, ref_o) < FP32_TOL
    with pytest.raises(ValueError, match="initial_state"):
        fused_recurrent_gdn2_fwd(*ins, inplace_final_state=True)


def test_zero_length_input():
    ins = make(T=0)
    h0 = state(1, 2, 32, 16)
    for fn in FNS.values():
        o, ht = fn(*ins, initial_state=h0, output_final_state=True)
        assert o.shape == (1, 0, 2, 16)
        assert torch.equal(ht.cpu(), h0.cpu())


@pytest.mark.parametrize("T", [1, 37])
def test_dispatch_triton_backend(T):
    # the dispatch calls our kernels with its own keyword arguments (T <= 16 -> recurrent, else chunk)
    ins = make(T=T, K=16, V=16)
    h0 = state(1, 2, 16, 16)
    o, ht = gdn2_recurrence(*ins, backend="triton", initial_state=h0, output_final_state=True)
    ref_o, ref_h = naive_recurrent_gdn2(*ins, initial_state=h0)
    assert rel_err(o, ref_o) < FP32_TOL
    assert rel_err(ht, ref_h) < FP32_TOL


# ------------------------------------------------------------------------------- nothing is left unwritten
def test_no_output_element_left_unwritten(monkeypatch):
    """Every buffer our code allocates (outputs and intermediates) starts as NaN; none may survive."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        x = real_empty(*args, **kwargs)
        if x.dtype.is_floating_point:
            x.fill_(float("nan"))
        return x

    ins = make(T=130, K=16, V=16)
    h0 = state(1, 2, 16, 16)
    cu = torch.tensor([0, 20, 100, 130], dtype=torch.int32, device=DEVICE)
    h0v = state(3, 2, 16, 16)
    monkeypatch.setattr(torch, "empty", nan_empty)
    assert torch.isnan(torch.empty(2)).all()  # the poison is in place
    outs = [
        chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=True),
        chunk_gdn2_fwd(*ins, output_final_state=True),
        chunk_gdn2_fwd(*ins, initial_state=h0v, output_final_state=True, cu_seqlens=cu),
        fused_recurrent_gdn2_fwd(*ins, initial_state=h0, output_final_state=True),
        fused_recurrent_gdn2_fwd(*ins, output_final_state=True, cu_seqlens=cu),
    ]
    monkeypatch.undo()
    for o, ht in outs:
        assert not torch.isnan(o).any()
        assert not torch.isnan(ht).any()


# ------------------------------------------------------------------------------------------------ validation
def _bad_cases():
    q, k, v, g, b, w = make(T=8, K=16, V=16)
    base = dict(q=q, k=k, v=v, g=g, b=b, w=w)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=DEVICE)
    cases = {
        "k shape": (dict(base, k=k[:, :4]), {}, "k"),
        "b shape": (dict(base, b=b[..., :8]), {}, "b"),
        "v batch": (dict(base, v=torch.cat([v, v])), {}, "v"),
        "w shape": (dict(base, w=w[..., :8]), {}, "w"),
        "q 3-D": (dict(base, q=q[0]), {}, "q"),
        "v heads": (dict(base, v=torch.cat([v, v[:, :, :1]], 2), w=torch.cat([w, w[:, :, :1]], 2)), {}, "v"),
        "K unsupported": (dict(base, q=q[..., :12], k=k[..., :12], g=g[..., :12], b=b[..., :12]), {}, "K"),
        "V unsupported": (dict(base, v=v[..., :12], w=w[..., :12]), {}, "V"),
        "k dtype": (dict(base, k=k.double()), {}, "k"),
        "v dtype": (dict(base, v=v.half()), {}, "v"),
        "b dtype": (dict(base, b=b.bfloat16()), {}, "b"),
        "g dtype": (dict(base, g=g.bfloat16()), {}, "g"),
        "q dtype": (dict(base, q=q.int(), k=k.int(), v=v.int(), b=b.int(), w=w.int()), {}, "q"),
        "w device": (dict(base, w=w.to("meta")), {}, "w"),
        "state shape": (base, dict(initial_state=state(2, 2, 16, 16)), "initial_state"),
        "state dtype": (base, dict(initial_state=state(1, 2, 16, 16).double()), "initial_state"),
        "state device": (base, dict(initial_state=state(1, 2, 16, 16).to("meta")), "initial_state"),
        "cu 2-D": (base, dict(cu_seqlens=cu[None]), "cu_seqlens"),
        "cu float": (base, dict(cu_seqlens=cu.float()), "cu_seqlens"),
        "cu start": (base, dict(cu_seqlens=torch.tensor([1, 3, 8], device=DEVICE)), "cu_seqlens"),
        "cu decreasing": (base, dict(cu_seqlens=torch.tensor([0, 5, 3, 8], device=DEVICE)), "cu_seqlens"),
        "cu end": (base, dict(cu_seqlens=torch.tensor([0, 3, 7], device=DEVICE)), "cu_seqlens"),
        "cu batch": (
            {n: torch.cat([x, x]) for n, x in base.items()}, dict(cu_seqlens=cu), "cu_seqlens"),
        "cu state rows": (base, dict(cu_seqlens=cu, initial_state=state(1, 2, 16, 16)), "initial_state"),
    }
    return cases


BAD = _bad_cases()


class _NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched before the inputs were checked")


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("case", BAD)
def test_validation_errors_name_the_argument(fn, case, monkeypatch):
    from gdn2_eval.kernels.gdn2 import fused_recurrent as rec_mod

    for mod, names in ((chunk_mod, ("_intra_kernel", "_sweep_kernel")), (rec_mod, ("_recurrent_kernel",))):
        for name in names:
            monkeypatch.setattr(mod, name, _NoLaunch())
    tensors, kwargs, arg = BAD[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            FNS[fn](**tensors, **kwargs)
    msg = str(info.value)
    assert arg in msg.replace(",", " ").replace("(", " ").replace("=", " ").split() or msg.startswith(arg), msg


def test_check_inputs_accepts_good_inputs():
    ins = make(T=8, K=16, V=16)
    x = _check_inputs(*ins, initial_state=state(1, 2, 16, 16))
    assert (x.B, x.T, x.H, x.HV, x.K, x.V, x.N) == (1, 8, 2, 2, 16, 16, 1)
    assert x.scale == pytest.approx(16**-0.5)
