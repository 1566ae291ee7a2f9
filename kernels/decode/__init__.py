"""The GDN-2 mixer's one-token decode step between its projections: `fused_step.py` (one Triton kernel) and
`naive.py` (the same step as the separate reference operators)."""
