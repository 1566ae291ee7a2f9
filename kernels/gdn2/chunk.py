"""Chunkwise GDN-2 forward (prefill) in Triton: inference only, two kernels, no per-chunk states in memory.

Spec section 2 with chunk size C = 64 (four sub-chunks of 16 for the decay bookkeeping).

* ``_intra_kernel``, one program per (chunk, key head), fully parallel. From q, k, g, b (and v, w of the value heads
  that share the key head) it computes, all accumulation in fp32:

      T = tril(Ebar Kbar^T, -1)      Aqk = tril(Qg Kbar^T)       Ainv = (I + T)^-1
      Y = Ainv Ebar     Q' = Qg - Aqk Y     U = Ainv (w * v)     Ou = Aqk U     Kt = (gamma_C / gamma) k

  and stores, per chunk and head, the stacked tiles [Y; Q'] (128 x K), Kt (64 x K), [U; -Ou] (128 x V) and gamma_C.
  With R = U - Y S0 the chunk's output is O = Qg S0 + Aqk R = Q' S0 + Ou, so the sequential part needs two
  matrix products per chunk and never sees Aqk:

      [R; -O] = [U; -Ou] - [Y; Q'] S0          S_end = gamma_C * S0 + Kt^T R

  Every decay is evaluated as exp(x) with x <= 0, or within exp(+-FAST_SPAN/2): a pair of tokens r > s in sub-chunks
  i > j uses exp(G_r - G_s) = exp(G_r - B_i) * exp(B_i - B_{j+1}) * exp(B_{j+1} - G_s) (B_i: cumulative decay
  before sub-chunk i), grouped by the distance i - j so that each group is one 64x64 product; inside a sub-chunk the
  reference is its midpoint, and where a sub-chunk's decay span exceeds FAST_SPAN (strong gates) the diagonal
  blocks are computed column by column with exp(G_r - G_s), exact for any gate. The 16x16 diagonal blocks D of
  (I + T) are inverted as (I - Td)(I + Td^2)(I + Td^4)(I + Td^8) (Td^16 = 0; TUNE["intra_inv"] = 0 switches to
  row-by-row forward substitution, slower on an H100), then (I + T)^-1 = (I - M)(I + M^2) D^-1 with M = D^-1 N (N the
  strictly block-lower part, M^4 = 0).

* ``_sweep_kernel``, one program per (sequence, value head, V-block), walks the chunks in order with the state
  S (K x BV, fp32) in registers and writes o directly. The final state is stored only when asked for.

Intermediates are stored in bf16 for bf16 inputs and in fp32 otherwise. Intermediate buffers are laid out per
chunk slot (rows past the end of a sequence hold zeros), so the sweep loads whole tiles without masks.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .utils import check_inputs, num_sms, tcumsum, tmax, tsum

BT = 64  # chunk size
# The diagonal sub-chunk blocks take the fast (matmul) path while the largest per-channel decay across any
# 16-token sub-chunk is at most this: every factor stays within [exp(-FAST_SPAN), exp(FAST_SPAN / 2)], normal fp32.
_FAST_SPAN = 80.0
# A 64-token chunk whose largest per-channel decay is at most this takes one product per matrix around the chunk's
# mid-decay: factors within exp(+-CHUNK_SPAN / 2), far from fp32's range (exp(+-88)).
_CHUNK_SPAN = 120.0

# Tuning knobs (None = default); the benchmark sets them to compare choices.
TUNE: dict[str, int | str | None] = {
    "sweep_bv": None, "sweep_warps": None, "sweep_stages": None, "segment_chunks": None,
    "intra_warps": None, "intra_bk": None, "intra_bv": None, "intra_prec": None, "solve_prec": None,
    "intra_inv": None, "intra_chunk_ref": None, "intra_maxnreg": None,
}
# Benchmark-only switch: "intra" or "sweep" launches just that kernel (for timing it alone; results are garbage).
_ONLY: dict[str, str | None] = {"kernel": None}


@triton.jit
def _mm(a, b, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST: the operands are widened to fp32 first (Triton's CPU interpreter
    cannot multiply bf16 tiles; widening a bf16 value is exact, so results match the GPU path)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _rowv(x, o_t, r):
    """Row r of a [64, D] tile as a [1, D] tile."""
    return tsum(tl.where((o_t == r)[:, None], x, 0.0), 0)[None, :]


@triton.jit
def _by_block(blk, x0, x1, x2, x3):
    """[64, D] tile whose rows of sub-chunk i are the [1, D] tile x_i."""
    return tl.where((blk == 0)[:, None], x0, tl.where((blk == 1)[:, None], x1, tl.where((blk == 2)[:, None], x2, x3)))


@triton.jit
def _intra_kernel(
    q, k, v, g, b, w,
    YQ, KT, UO, GC,
    cu_seqlens, chunk_indices,
    scale, T, c_begin, n_seg,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr, DOT_PREC: tl.constexpr, SOLVE_PREC: tl.constexpr,
    FAST_SPAN: tl.constexpr, CHUNK_SPAN: tl.constexpr, INV: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
        i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        cid = i_n + bos // 64 + i_t
    else:
        # chunks c_begin .. c_begin + n_seg - 1 of every sequence
        i_n = (i_c // n_seg).to(tl.int64)
        i_t = (c_begin + i_c % n_seg).to(tl.int64)
        bos = i_n * T
        eos = bos + T
        cid = i_n * ((T + 63) // 64) + i_t
    SK: tl.constexpr = H * K
    kh = i_h * K
    o_t = tl.arange(0, 64)
    rows = bos + i_t * 64 + o_t
    m = (rows < eos)[:, None]
    prow = rows.to(tl.int64)[:, None] * SK + kh
    blk = o_t // 16
    loc = o_t % 16
    # distance (in sub-chunks) between the row and the column of each T / Aqk entry
    dist = blk[:, None] - blk[None, :]
    lower = o_t[:, None] > o_t[None, :]
    causal = o_t[:, None] >= o_t[None, :]

    Tm = tl.zeros([64, 64], dtype=tl.float32)
    Am = tl.zeros([64, 64], dtype=tl.float32)
    qss = tl.zeros([64], dtype=tl.float32)
    kss = tl.zeros([64], dtype=tl.float32)
    for i_k in range(K // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        p = prow + o_k[None, :]
        gt = tl.load(g + p, mask=m, other=0.0)
        qt = tl.load(q + p, mask=m, other=0.0).to(tl.float32)
        kt = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
        et = tl.load(b + p, mask=m, other=0.0).to(tl.float32) * kt
        qss += tsum(qt * qt, 1)
        kss += tsum(kt * kt, 1)
        G = tcumsum(gt, 0)
        # whole-chunk reference (the chunk's mid-decay) when every factor exp(+-(G - mid)) stays a normal fp32:
        # one 64x64 product per matrix; entries above the diagonal may overflow and are masked below
        Gend = tsum(gt, 0)[None, :]
        if tmax(tmax(-Gend, 1), 0) <= CHUNK_SPAN:
            mid = 0.5 * Gend
            Rm = tl.exp(G - mid)
            KmT = tl.trans(kt * tl.exp(mid - G))
            Tm += tl.dot(et * Rm, KmT, input_precision=DOT_PREC)
            Am += tl.dot(qt * Rm, KmT, input_precision=DOT_PREC)
        else:
            B1 = _rowv(G, o_t, 15)
            B2 = _rowv(G, o_t, 31)
            B3 = _rowv(G, o_t, 47)
            B4 = _rowv(G, o_t, 63)
            Bs = _by_block(blk, tl.zeros_like(B1), B1, B2, B3)  # decay before the row's sub-chunk
            Be = _by_block(blk, B1, B2, B3, B4)  # ... up to its end
            Rf = tl.exp(G - Bs)  # <= 1
            Cf = tl.exp(Be - G)  # <= 1
            Er = et * Rf
            Qr = qt * Rf
            KcT = tl.trans(kt * Cf)
            # sub-chunk distance 1: the two factors meet at B_i = B_{j+1}
            Tm += tl.where(dist == 1, tl.dot(Er, KcT, input_precision=DOT_PREC), 0.0)
            Am += tl.where(dist == 1, tl.dot(Qr, KcT, input_precision=DOT_PREC), 0.0)
            # distance 2 and 3: bridge exp(B_i - B_{j+1}) on the row side
            P1 = _by_block(blk, tl.zeros_like(B1), tl.zeros_like(B1), tl.exp(B2 - B1), tl.exp(B3 - B2))
            Tm += tl.where(dist == 2, tl.dot(Er * P1, KcT, input_precision=DOT_PREC), 0.0)
            Am += tl.where(dist == 2, tl.dot(Qr * P1, KcT, input_precision=DOT_PREC), 0.0)
            P2 = tl.where((blk == 3)[:, None], tl.exp(B3 - B1), 0.0)
            Tm += tl.where(dist == 3, tl.dot(Er * P2, KcT, input_precision=DOT_PREC), 0.0)
            Am += tl.where(dist == 3, tl.dot(Qr * P2, KcT, input_precision=DOT_PREC), 0.0)
            # diagonal blocks
            span = tmax(tmax(Bs - Be, 1), 0)
            if span <= FAST_SPAN:
                # midpoint reference: row factor exp(G_r - mid) = Rf * h, column factor exp(mid - G_s) = Cf * h
                h = tl.exp(0.5 * (Bs - Be))
                KhT = tl.trans(kt * Cf * h)
                Tm += tl.where((dist == 0) & lower, tl.dot(Er * h, KhT, input_precision=DOT_PREC), 0.0)
                Am += tl.where((dist == 0) & causal, tl.dot(Qr * h, KhT, input_precision=DOT_PREC), 0.0)
            else:
                # exact for any gate: column s = 16 j + c of every sub-chunk j at once, exp(G_r - G_s) for r >= s
                for c in range(16):
                    Gc = _by_block(blk, _rowv(G, o_t, c), _rowv(G, o_t, 16 + c), _rowv(G, o_t, 32 + c),
                                   _rowv(G, o_t, 48 + c))
                    kc = _by_block(blk, _rowv(kt, o_t, c), _rowv(kt, o_t, 16 + c), _rowv(kt, o_t, 32 + c),
                                   _rowv(kt, o_t, 48 + c))
                    D = tl.exp(tl.where((loc >= c)[:, None], G - Gc, float("-inf"))) * kc
                    tcol = tsum(et * D, 1)
                    acol = tsum(qt * D, 1)
                    sel = (dist == 0) & ((loc == c)[None, :])
                    Tm += tl.where(sel & lower, tcol[:, None], 0.0)
                    Am += tl.where(sel & causal, acol[:, None], 0.0)

    if L2NORM:
        rk = tl.rsqrt(kss + 1e-6)
        rq = tl.rsqrt(qss + 1e-6) * scale
    else:
        rk = tl.full([64], 1.0, tl.float32)
        rq = tl.full([64], 1.0, tl.float32) * scale
    Tm = tl.where(lower, Tm * rk[:, None] * rk[None, :], 0.0)
    Am = tl.where(causal, Am * rq[:, None] * rk[None, :], 0.0)

    # (I + T_ii)^-1 of the four 16x16 diagonal blocks at once, by forward substitution (row r of every block)
    same = dist == 0
    eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    Td = tl.where(same, Tm, 0.0)
    if INV == 0:
        X = eye
        for r in range(1, 16):
            t_r = tsum(tl.where(o_t[:, None] == (blk * 16 + r)[None, :], Td, 0.0), 0)  # T[16 blk(s) + r, s]
            n_r = tsum(t_r[:, None] * X, 0)
            X = tl.where((loc == r)[:, None] & same, eye - n_r[None, :], X)
    else:
        # Td is nilpotent (Td^16 = 0): (I + Td)^-1 = (I - Td)(I + Td^2)(I + Td^4)(I + Td^8)
        T2 = tl.dot(Td, Td, input_precision=SOLVE_PREC)
        T4 = tl.dot(T2, T2, input_precision=SOLVE_PREC)
        X = tl.dot(eye - Td, eye + T2, input_precision=SOLVE_PREC)
        X = tl.dot(X, eye + T4, input_precision=SOLVE_PREC)
        X = tl.dot(X, eye + tl.dot(T4, T4, input_precision=SOLVE_PREC), input_precision=SOLVE_PREC)
    M = tl.dot(X, tl.where(dist > 0, Tm, 0.0), input_precision=SOLVE_PREC)
    M2 = tl.dot(M, M, input_precision=SOLVE_PREC)
    Ainv = tl.dot(tl.dot(eye - M, eye + M2, input_precision=SOLVE_PREC), X, input_precision=SOLVE_PREC)

    # Y = Ainv Ebar, Q' = Qg - Aqk Y, Kt, gamma_C
    pyq = YQ + ((cid * H + i_h) * 128 + o_t.to(tl.int64))[:, None] * K
    pkt = KT + ((cid * H + i_h) * 64 + o_t.to(tl.int64))[:, None] * K
    for i_k in range(K // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        p = prow + o_k[None, :]
        gt = tl.load(g + p, mask=m, other=0.0)
        G = tcumsum(gt, 0)
        B4 = _rowv(G, o_t, 63)
        gam = tl.exp(G)
        kt = tl.load(k + p, mask=m, other=0.0).to(tl.float32) * rk[:, None]
        Eb = tl.load(b + p, mask=m, other=0.0).to(tl.float32) * kt * gam
        y = tl.dot(Ainv, Eb, input_precision=DOT_PREC)
        qg = tl.load(q + p, mask=m, other=0.0).to(tl.float32) * rq[:, None] * gam
        qp = qg - tl.dot(Am, y, input_precision=DOT_PREC)
        tl.store(pyq + o_k[None, :], y.to(YQ.dtype.element_ty))
        tl.store(pyq + 64 * K + o_k[None, :], qp.to(YQ.dtype.element_ty))
        tl.store(pkt + o_k[None, :], (kt * tl.exp(B4 - G)).to(KT.dtype.element_ty))
        tl.store(GC + (cid * H + i_h) * K + o_k[None, :], tl.exp(B4))

    # U = Ainv (w * v), -Ou = -Aqk U for every value head sharing this key head
    SV: tl.constexpr = HV * V
    GROUP: tl.constexpr = HV // H
    for i_g in range(GROUP):
        hv = i_h * GROUP + i_g
        puo = UO + ((cid * HV + hv) * 128 + o_t.to(tl.int64))[:, None] * V
        for i_v in range(V // BV):
            o_v = i_v * BV + tl.arange(0, BV)
            pv = rows.to(tl.int64)[:, None] * SV + hv * V + o_v[None, :]
            z = tl.load(v + pv, mask=m, other=0.0).to(tl.float32) * tl.load(w + pv, mask=m, other=0.0).to(tl.float32)
            u = tl.dot(Ainv, z, input_precision=DOT_PREC)
            tl.store(puo + o_v[None, :], u.to(UO.dtype.element_ty))
            tl.store(puo + 64 * V + o_v[None, :], (-tl.dot(Am, u, input_precision=DOT_PREC)).to(UO.dtype.element_ty))


@triton.jit
def _sweep_kernel(
    YQ, KT, UO, GC, o, h0, ht, cu_seqlens, T, c_begin, c_end,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
    DOT_PREC: tl.constexpr, NUM_STAGES: tl.constexpr, UPCAST: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = (i_nh // HV).to(tl.int64)
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        cid0 = i_n + bos // 64
    else:
        bos = i_n * T
        eos = bos + T
        cid0 = i_n * ((T + 63) // 64)
    NT = (eos - bos + 63) // 64

    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    o_r = tl.arange(0, 128)
    IDT: tl.constexpr = YQ.dtype.element_ty
    SV: tl.constexpr = HV * V

    p_state = (i_n * HV + i_hv) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        S = tl.load(h0 + p_state).to(tl.float32)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)

    top = (o_r < 64)[:, None]
    for c in tl.range(c_begin, tl.minimum(c_end, NT), num_stages=NUM_STAGES):
        cid = (cid0 + c).to(tl.int64)
        b_yq = tl.load(YQ + ((cid * H + i_h) * 128 + o_r)[:, None] * K + o_k[None, :])
        b_kt = tl.load(KT + ((cid * H + i_h) * 64 + o_r)[:, None] * K + o_k[None, :], mask=top, other=0.0)
        b_z = tl.load(UO + ((cid * HV + i_hv) * 128 + o_r)[:, None] * V + o_v[None, :]).to(tl.float32)
        b_g = tl.load(GC + (cid * H + i_h) * K + o_k)
        # rows 0..63: R = U - Y S; rows 64..127: -O = -Ou - Q' S
        RO = b_z - _mm(b_yq, S.to(IDT), DOT_PREC, UPCAST)
        t = bos + c * 64 + o_r - 64
        tl.store(o + t[:, None] * SV + i_hv * V + o_v[None, :], (-RO).to(o.dtype.element_ty),
                 mask=(~top) & (t < eos)[:, None])
        S = S * b_g[:, None] + _mm(tl.trans(b_kt), RO.to(IDT), DOT_PREC, UPCAST)

    if STORE_HT:
        tl.store(ht + p_state, S)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _sweep_bv(N: int, HV: int, V: int, device: torch.device) -> int:
    if TUNE["sweep_bv"]:
        return min(V, int(TUNE["sweep_bv"]))
    # the sweep is sequential over chunks: use narrow V-blocks when there are few (sequence, head) pairs
    sms = num_sms(device)
    for bv in (64, 32):
        if bv <= V and N * HV * (V // bv) >= 2 * sms:
            return bv
    return 16 if V >= 16 else V


def _precision(dtype: torch.dtype) -> tuple[torch.dtype, str, str]:
    """(dtype of the stored intermediates, tl.dot precision of fp32 operands, precision of the solve)."""
    if dtype == torch.float32 or _interpreting():
        return (torch.float32 if dtype != torch.bfloat16 else torch.bfloat16), "ieee", "ieee"
    idt = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    return idt, str(TUNE["intra_prec"] or "tf32"), str(TUNE["solve_prec"] or "tf32")


def intra_launch_meta(H: int, HV: int, K: int, V: int, varlen: bool, l2norm: bool, prec: str,
                      solve_prec: str) -> dict:
    """Compile-time arguments and launch options of `_intra_kernel` under the current `TUNE` (also read by
    `gdn2_eval.bench.resources`, which compiles the same variants without a GPU)."""
    return dict(
        H=H, HV=HV, K=K, V=V, BK=min(K, int(TUNE["intra_bk"] or 32)), BV=min(V, int(TUNE["intra_bv"] or 64)),
        IS_VARLEN=varlen, L2NORM=l2norm, DOT_PREC=prec, SOLVE_PREC=solve_prec,
        FAST_SPAN=_FAST_SPAN, CHUNK_SPAN=_CHUNK_SPAN if TUNE["intra_chunk_ref"] is None else -1.0,
        INV=1 if TUNE["intra_inv"] is None else int(TUNE["intra_inv"]),
        # 8 warps: at 4 the kernel spills about 1.3 KB per thread on sm_90 (`python -m gdn2_eval.bench.resources`)
        num_warps=int(TUNE["intra_warps"] or 8),
        # a register cap (Triton's maxnreg) trades spills for a second program per SM
        **({"maxnreg": int(TUNE["intra_maxnreg"])} if TUNE["intra_maxnreg"] else {}),
    )


def sweep_launch_meta(H: int, HV: int, K: int, V: int, BV: int, varlen: bool, prec: str, upcast: bool) -> dict:
    """Compile-time arguments and launch options of `_sweep_kernel` (but USE_H0 / STORE_HT) under `TUNE`."""
    return dict(
        H=H, HV=HV, K=K, V=V, BV=BV, IS_VARLEN=varlen, DOT_PREC=prec,
        NUM_STAGES=int(TUNE["sweep_stages"] or (3 if BV <= 32 else 2)), UPCAST=upcast,
        num_warps=int(TUNE["sweep_warps"] or 8),
    )


def chunk_gdn2_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GDN-2 forward over whole sequences (prefill), chunkwise.

    q, k, g, b: [B, T, H, K]; v, w: [B, T, HV, V] (HV a multiple of H; value head hv uses key head hv // (HV//H));
    g float32 log-decay; initial_state [N, HV, K, V] float32 with N = B, or the number of sequences when
    `cu_seqlens` ([N+1] int, B = 1) is given. Returns (o [B, T, HV, V] in v's dtype, final state fp32 or None).
    """
    x = check_inputs(q, k, v, g, b, w, scale, initial_state, cu_seqlens)
    B, T, H, HV, K, V, N = x.B, x.T, x.H, x.HV, x.K, x.V, x.N
    dev = x.q.device
    idt, prec, solve_prec = _precision(x.q.dtype)

    o = torch.empty(B, T, HV, V, dtype=x.v.dtype, device=dev)
    ht = torch.empty(N, HV, K, V, dtype=torch.float32, device=dev) if output_final_state else None
    if T == 0 or N == 0:
        if ht is not None:
            if x.initial_state is not None:
                ht.copy_(x.initial_state)
            else:
                ht.zero_()
        return o, ht

    varlen = x.cu_seqlens is not None
    if not varlen:
        NT = triton.cdiv(T, BT)
        n_slots = B * NT
        chunk_indices = None
    else:
        pairs = []
        for n, (s, e) in enumerate(zip(x.bounds[:-1], x.bounds[1:])):
            pairs.extend((n, c) for c in range(triton.cdiv(e - s, BT)))
        n_chunks = len(pairs)
        n_slots = N + triton.cdiv(T, BT)  # slot of chunk c of sequence n: n + bos_n // 64 + c
        chunk_indices = torch.tensor(pairs, dtype=torch.int32).reshape(-1).to(dev, non_blocking=True)

    # per chunk slot and head: [Y; Q'] (128 x K), Kt (64 x K), [U; -Ou] (128 x V), gamma_C (K)
    YQ = torch.empty(n_slots, H, 128, K, dtype=idt, device=dev)
    KT = torch.empty(n_slots, H, 64, K, dtype=idt, device=dev)
    UO = torch.empty(n_slots, HV, 128, V, dtype=idt, device=dev)
    GC = torch.empty(n_slots, H, K, dtype=torch.float32, device=dev)
    BV = _sweep_bv(N, HV, V, dev)
    interp = _interpreting()

    intra_meta = intra_launch_meta(H, HV, K, V, varlen, bool(use_qk_l2norm), prec, solve_prec)
    sweep_meta = sweep_launch_meta(H, HV, K, V, BV, varlen, prec, interp)

    def intra(c_begin: int, n_seg: int) -> None:
        grid = (n_chunks if varlen else B * n_seg, H)
        if grid[0] == 0 or _ONLY["kernel"] == "sweep":
            return
        _intra_kernel[grid](
            x.q, x.k, x.v, x.g, x.b, x.w, YQ, KT, UO, GC, x.cu_seqlens, chunk_indices, x.scale, T,
            c_begin, n_seg, **intra_meta,
        )

    def sweep(c_begin: int, c_end: int, h0: torch.Tensor | None, h1: torch.Tensor | None) -> None:
        if _ONLY["kernel"] == "intra":
            return
        _sweep_kernel[(triton.cdiv(V, BV), N * HV)](
            YQ, KT, UO, GC, o, h0, h1, x.cu_seqlens, T, c_begin, c_end,
            USE_H0=h0 is not None, STORE_HT=h1 is not None, **sweep_meta,
        )

    seg = None if varlen else _segment_chunks(B, T, N * HV * triton.cdiv(V, BV), dev)
    if seg is None:
        intra(0, triton.cdiv(T, BT))
        sweep(0, 1 << 30, x.initial_state, ht)
        return o, ht

    # Long inputs: cut the time axis into segments of `seg` chunks; the sweep of segment p (on a high-priority
    # side stream, few programs) overlaps the intra-chunk kernel of segment p + 1 (bandwidth-bound, many programs).
    # The state passes between segments through `state` (each sweep program reads its slice, then overwrites it).
    NT = triton.cdiv(T, BT)
    state = ht if ht is not None else torch.empty(N, HV, K, V, dtype=torch.float32, device=dev)
    h0 = x.initial_state
    if dev.type != "cuda":  # same segmented schedule, one after the other (lets the CPU tests cover it)
        for c0 in range(0, NT, seg):
            intra(c0, min(seg, NT - c0))
            sweep(c0, c0 + seg, h0, state)
            h0 = state
        return o, ht
    main = torch.cuda.current_stream(dev)
    side = _side_stream(dev)
    side.wait_stream(main)  # inputs and buffers are ready
    for c0 in range(0, NT, seg):
        intra(c0, min(seg, NT - c0))
        done = torch.cuda.Event()
        done.record(main)
        with torch.cuda.stream(side):
            side.wait_event(done)
            sweep(c0, c0 + seg, h0, state)
        h0 = state
    # everything later on the caller's stream (including reuse of the freed buffers) waits for the last sweep
    main.wait_stream(side)
    return o, ht


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream(dev: torch.device) -> torch.cuda.Stream:
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SIDE_STREAMS:
        lo, hi = torch.cuda.Stream.priority_range()
        _SIDE_STREAMS[idx] = torch.cuda.Stream(device=idx, priority=hi)
    return _SIDE_STREAMS[idx]


def _segment_chunks(B: int, T: int, sweep_programs: int, dev: torch.device) -> int | None:
    """Chunks per segment for the overlapped schedule, or None to run the two kernels one after the other."""
    seg = TUNE.get("segment_chunks")
    if seg is not None:
        return int(seg) if int(seg) > 0 else None
    if dev.type != "cuda" or _interpreting():
        return None
    NT = triton.cdiv(T, BT)
    if NT < 128 or sweep_programs > num_sms(dev):
        return None
    return 64
