"""One new process's way to its first forward (run by `bench model` for the cold start): import, build a random
model on the GPU on the default evaluation path, prefill one 4K prompt, take one captured decode step. Prints one
JSON line of seconds since `$GDN2_T0` (the launching process's clock), or since this process started."""

from __future__ import annotations

import os
import time

T0 = float(os.environ.get("GDN2_T0") or time.time())

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gdn2_1.3B")
    ap.add_argument("--kernel", default="auto")
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    import torch

    from ..generation import GraphDecoder, prefill
    from ..inference import GDN2InferenceForCausalLM
    from ..model import GDN2Config, GDN2ForCausalLM

    since = lambda: time.time() - T0  # noqa: E731
    out = {"import_s": since()}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GDN2ForCausalLM(GDN2Config.from_preset(args.preset, kernel=args.kernel))
    model = GDN2InferenceForCausalLM.from_reference(model.to(torch.bfloat16).eval())
    torch.cuda.synchronize()
    out["model_built_s"] = since()
    prompt = torch.randint(0, 32000, (args.tokens,)).tolist()
    with torch.no_grad():
        cache, last = prefill(model, [prompt], 0, 65536)
        torch.cuda.synchronize()
        out["first_forward_s"] = since()
        GraphDecoder(model, cache, last.argmax(-1)).step()
        torch.cuda.synchronize()
    out["first_decode_step_s"] = since()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
