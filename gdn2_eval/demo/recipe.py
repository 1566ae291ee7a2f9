"""The recipe of a demo model: every choice that determines it, recorded in its `training.json`. Kept apart from
the training code (`train.py`) so that the CLI takes its defaults from here without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class DemoRecipe:
    """Everything that determines a demo model (recorded in `training.json`)."""

    gates: str = "gdn2"
    hidden_size: int = 192
    layers: int = 4
    heads: int = 3
    head_dim: int = 64
    intermediate_size: int = 512
    vocab_size: int = 2048
    steps: int = 3000
    batch_tokens: int = 65536  # tokens per step: batch_tokens // length samples of one length
    lr: float = 2e-3
    warmup: int = 200
    lengths: tuple[int, ...] = (512, 1024, 2048)
    # The first steps draw short key-value lists (160-256 tokens: only the formats that fit), where a small model
    # gets past the answer-format plateau (loss about ln 10 per digit) first; the longer lengths follow.
    curriculum_steps: int = 750
    curriculum_lengths: tuple[int, ...] = (160, 192, 256)
    # Initial decay a * dt per token of about 1e-4 to 2e-2 (the paper's init: 1e-3 to 1.6): a fresh model then still
    # holds a needle hundreds of tokens later, so the answer's gradient reaches it (`GDN2Config.decay_init_*`).
    decay_init_a: tuple[float, float] = (1.0, 2.0)
    decay_init_dt: tuple[float, float] = (1e-4, 1e-2)
    seed: int = 0
    max_minutes: float = 14.0
    save_every: int = 500
    eval_samples: int = 50
    workers: int = 4

    @classmethod
    def from_record(cls, recipe: dict) -> DemoRecipe:
        """The recipe of a `training.json` (tuples come back as lists; fields it does not know are dropped)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items() if k in known})

    def cli_args(self) -> list[str]:
        """The `train-demo` options that set this recipe's training fields (the model shape is the demos' own)."""
        return ["--steps", str(self.steps), "--batch-tokens", str(self.batch_tokens),
                "--lengths", ",".join(map(str, self.lengths)), "--curriculum-steps", str(self.curriculum_steps),
                "--curriculum-lengths", ",".join(map(str, self.curriculum_lengths)), "--workers", str(self.workers),
                "--max-minutes", str(self.max_minutes), "--seed", str(self.seed),
                "--eval-samples", str(self.eval_samples)]

    def command(self) -> str:
        """The `train-demo` command line that trains this recipe."""
        return " ".join(["gdn2-eval train-demo --gates", self.gates, *self.cli_args(), "--out DIR"])

    def config(self, kernel: str):
        from ..model import GDN2Config

        return GDN2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            gdn2_num_heads=self.heads,
            gdn2_head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            training_length=max(self.lengths),
            decay_init_a=self.decay_init_a,
            decay_init_dt=self.decay_init_dt,
            gates=self.gates,
            kernel=kernel,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        )
