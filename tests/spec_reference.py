"""A direct, slow, float64 implementation of the spec (sections 1, 3, 4) on the authors' checkpoint keys.

Deliberately independent of `gdn2_eval.model`: it reads the authors' state dict as is (fused qkv and all) and loops
over tokens, so a wrong key mapping, de-interleave or activation in the package shows up as a logits mismatch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PREFIXES = ("_forward_module.", "module.", "_orig_mod.")


def strip(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        while k.startswith(PREFIXES):
            for p in PREFIXES:
                if k.startswith(p):
                    k = k[len(p) :]
        out[k] = v.double()
    return out


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def causal_conv(x, w):  # x [T, C], w [C, 1, 4]: y[t] = sum_j w[:, j] x[t - 3 + j]
    T = x.shape[0]
    xp = torch.cat((x.new_zeros(3, x.shape[1]), x), 0)
    return sum(w[:, 0, j] * xp[j : j + T] for j in range(4))


def gdn2_mixer(x, p, c):
    H, dk = c["gdn2_num_heads"], c["gdn2_head_dim"]
    dv = dk * c.get("gdn2_expand_v", 1)
    T = x.shape[0]
    q = F.silu(causal_conv(x @ p["q_proj.weight"].T, p["q_conv1d.weight"])).view(T, H, dk)
    k = F.silu(causal_conv(x @ p["k_proj.weight"].T, p["k_conv1d.weight"])).view(T, H, dk)
    v = F.silu(causal_conv(x @ p["v_proj.weight"].T, p["v_conv1d.weight"])).view(T, H, dv)
    f = (x @ p["f_proj.0.weight"].T) @ p["f_proj.1.weight"].T
    A = torch.exp(p["A_log"]).repeat_interleave(dk)
    g = (-A * F.softplus(f + p["dt_bias"])).view(T, H, dk)
    b = torch.sigmoid(x @ p["b_proj.weight"].T).view(T, H, dk)
    w = torch.sigmoid(x @ p["w_proj.weight"].T).view(T, H, dv)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    S = x.new_zeros(H, dk, dv)
    o = x.new_zeros(T, H, dv)
    for t in range(T):
        for h in range(H):
            Sbar = torch.diag(torch.exp(g[t, h])) @ S[h]
            e = b[t, h] * k[t, h]
            z = w[t, h] * v[t, h]
            r = Sbar.T @ e
            S[h] = Sbar + torch.outer(k[t, h], z - r)
            o[t, h] = S[h].T @ q[t, h] * dk**-0.5
    u = ((x @ p["g_proj.0.weight"].T) @ p["g_proj.1.weight"].T + p["g_proj.1.bias"]).view(T, H, dv)
    o = rmsnorm(o, p["o_norm.weight"], c["norm_eps"]) * F.silu(u)
    return o.reshape(T, H * dv) @ p["o_proj.weight"].T


def swa(x, p, c):
    nh, hd = c["n_head"], c["n_embd"] // c["n_head"]
    ng = c.get("n_query_groups") or nh
    per = nh // ng
    T, W = x.shape[0], c["local_window"]
    qkv = (x @ p["attn.weight"].T).view(T, ng, per + 2, hd)
    q = qkv[:, :, :per].reshape(T, nh, hd)
    k, v = qkv[:, :, per], qkv[:, :, per + 1]  # [T, ng, hd]
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)

    def rope(t):  # t [T, n, hd]
        rot = torch.cat((-t[..., hd // 2 :], t[..., : hd // 2]), -1)
        return t * cos[:, None] + rot * sin[:, None]

    q, k = rope(q), rope(k)
    out = x.new_zeros(T, nh, hd)
    for i in range(T):
        lo = max(0, i - W + 1)
        for h in range(nh):
            grp = h // per
            s = (k[lo : i + 1, grp] @ q[i, h]) / math.sqrt(hd)
            out[i, h] = torch.softmax(s, 0) @ v[lo : i + 1, grp]
    return out.reshape(T, nh * hd) @ p["proj.weight"].T


def spec_logits(state: dict, c: dict, ids: torch.Tensor) -> torch.Tensor:
    """float64 logits [T, vocab] of one sequence `ids` [T]."""
    sd = strip(state)
    eps = c.get("norm_eps", 1e-5)
    c = {"norm_eps": eps, **c}
    x = sd["transformer.wte.weight"][ids]
    for i in range(c["n_layer"]):
        pre = f"transformer.h.{i}."
        p = {k[len(pre) + 5 :]: v for k, v in sd.items() if k.startswith(pre + "attn.")}
        h = rmsnorm(x, sd[pre + "norm_1.weight"], eps)
        x = x + (gdn2_mixer(h, p, c) if i % c.get("gdn2_per_layer", 1) == 0 else swa(h, p, c))
        h = rmsnorm(x, sd[pre + "norm_2.weight"], eps)
        w1, w2, w3 = (sd[pre + f"mlp.swiglu.{n}.weight"] for n in ("w1", "w2", "w3"))
        x = x + (F.silu(h @ w1.T) * (h @ w2.T)) @ w3.T
    return rmsnorm(x, sd["transformer.ln_f.weight"], eps) @ sd["lm_head.weight"].T
