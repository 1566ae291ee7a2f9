"""Speed measurements (`gdn2-eval bench ...`, or `python -m gdn2_eval.bench.<name>`): the model end to end
(`model`), the GDN-2 kernels against fla's (`kernels`), the compiled kernels' registers and spills without a GPU
(`resources`), the RULER grid (`ruler`) and the Table 2 request mix (`backend`) against lm-eval's `hf` backend.
Each writes JSON under results/bench/ naming the device."""
