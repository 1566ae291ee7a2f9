"""Registers, spills and matrix instructions of this project's GDN-2 kernels, compiled for a GPU without one.

Triton compiles for a named target (here sm_90, the H100/H200) on any machine: its bundled `ptxas`, `cuobjdump`
and `nvdisasm` then tell, before any device time is spent, how many registers a kernel variant needs, how many
bytes per thread it spills to local memory (stack, `STL` stores) and how many matrix instructions it issues. A
variant that spills is slow on the device whatever its arithmetic, so this narrows the variants worth timing
with `python -m gdn2_eval.bench.kernels --tune`.

    python -m gdn2_eval.bench.resources            # the default and each knob of TUNE_VARIANTS, K = V = 128

The variants are those of `gdn2_eval.bench.kernels.TUNE_VARIANTS`; the launch arguments come from
`chunk.intra_launch_meta` / `chunk.sweep_launch_meta`, the ones the kernels are launched with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .kernels import HEAD_K, HEAD_V, HEADS, TUNE_VARIANTS

_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_report(fn, pointers: dict[str, str], scalars: dict[str, str], meta: dict, arch: int = 90) -> dict:
    """Compile `fn` for sm_`arch` with the compile-time arguments and launch options in `meta`; return its
    registers per thread, stack bytes per thread (spills), shared memory, spill stores and matrix instructions."""
    meta = dict(meta)
    options = {key: meta.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in meta}
    signature = {name: pointers.get(name) or scalars.get(name) or "constexpr" for name in fn.arg_names}
    missing = [n for n, t in signature.items() if t == "constexpr" and n not in meta]
    if missing:
        raise ValueError(f"no type or value for {', '.join(missing)}")
    kernel = triton.compile(ASTSource(fn, signature, meta), target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    found = _RESOURCES.search(usage)
    if not found:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{usage}")
    regs, stack, _, _ = (int(x) for x in found.groups())
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": kernel.metadata.shared,
            "spill_stores": len(re.findall(r"\bSTL\b", sass)),
            "matrix_instructions": len(re.findall(r"\b(?:HGMMA|HMMA)\b", sass)), **options}


def kernel_reports(variant: dict, H: int = HEADS, K: int = HEAD_K, V: int = HEAD_V, arch: int = 90) -> list[dict]:
    """Both prefill kernels for bf16 inputs under `variant` (knobs of `chunk.TUNE`), non-varlen, L2-norm on."""
    from gdn2_eval.kernels.gdn2 import chunk as ch

    saved = dict(ch.TUNE)
    try:
        ch.TUNE.update(variant)
        bf16 = "*bf16"
        intra = compile_report(
            ch._intra_kernel,
            {**dict.fromkeys(("q", "k", "v", "b", "w", "YQ", "KT", "UO"), bf16), "g": "*fp32", "GC": "*fp32",
             "cu_seqlens": "*i32", "chunk_indices": "*i32"},
            {"scale": "fp32", "T": "i32", "c_begin": "i32", "n_seg": "i32"},
            ch.intra_launch_meta(H, H, K, V, False, True, "tf32", "tf32"), arch)
        # the launch picks BV from the device's SM count (`chunk._sweep_bv`): 32 at 8 x 4K on an H100, 16 at 1 x 64K
        bv = min(V, int(ch.TUNE["sweep_bv"] or 32))
        sweep = compile_report(
            ch._sweep_kernel,
            {**dict.fromkeys(("YQ", "KT", "UO", "o"), bf16), **dict.fromkeys(("GC", "h0", "ht"), "*fp32"),
             "cu_seqlens": "*i32"},
            {"T": "i32", "c_begin": "i32", "c_end": "i32"},
            {**ch.sweep_launch_meta(H, H, K, V, bv, False, "tf32", False), "USE_H0": True, "STORE_HT": True}, arch)
    finally:
        ch.TUNE.clear()
        ch.TUNE.update(saved)
    return [{"kernel": "intra", "variant": variant, **intra},
            {"kernel": "sweep", "variant": variant, "BV": bv, **sweep}]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    ap.add_argument("--variants", help='JSON list of TUNE settings, e.g. \'[{}, {"intra_warps": 4}]\' '
                    "[default: bench_kernels.TUNE_VARIANTS plus both warp counts]")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources compiles the kernels: unset TRITON_INTERPRET "
                         "(the interpreter compiles nothing)")
    variants = json.loads(args.variants) if args.variants else [*TUNE_VARIANTS, {"intra_warps": 4}]
    rows = []
    print(f"{'kernel':6} {'variant':40} {'regs':>4} {'stack B':>7} {'STL':>4} {'mma':>4} {'smem B':>7}")
    for var in variants:
        for row in kernel_reports(var, arch=args.arch):
            rows.append(row)
            print(f"{row['kernel']:6} {json.dumps(row['variant']):40} {row['registers']:4d} {row['stack_bytes']:7d} "
                  f"{row['spill_stores']:4d} {row['matrix_instructions']:4d} {row['shared_bytes']:7d}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
