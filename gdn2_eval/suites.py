"""Named task suites and the paper's metric choices for them (see the evaluation spec, Table 2)."""

from __future__ import annotations

from .ruler.registry import FULL_LENGTHS, PAPER_GRID, TASKS

# Table 2 columns: (column, lm-eval task, metric). The Avg. is the mean of LAMBADA acc and the eight reasoning
# accuracies, in percent.
TABLE2_COLUMNS: list[tuple[str, str, str]] = [
    ("Wiki. ppl", "wikitext", "word_perplexity"),
    ("LMB. ppl", "lambada_openai", "perplexity"),
    ("LMB. acc", "lambada_openai", "acc"),
    ("PIQA", "piqa", "acc"),
    ("Hella.", "hellaswag", "acc_norm"),
    ("Wino.", "winogrande", "acc"),
    ("ARC-e", "arc_easy", "acc"),
    ("ARC-c", "arc_challenge", "acc"),
    ("OBQA", "openbookqa", "acc"),
    ("SIQA", "social_iqa", "acc"),
    ("BoolQ", "boolq", "acc"),
]
TABLE2_AVG_COLUMNS = [c for c, _, m in TABLE2_COLUMNS if m in ("acc", "acc_norm")]

_COMMONSENSE = ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "social_iqa", "boolq"]
SUITES: dict[str, list[str]] = {
    "lm": ["wikitext", "lambada_openai"],
    "commonsense": [*_COMMONSENSE, "lambada_openai"],
    "table2": ["wikitext", "lambada_openai", *_COMMONSENSE],
}

# Table 4: real-world recall, "Just read twice" protocol (contexts truncated to 2K tokens under the model's
# tokenizer; tasks/recall/, which shadow lm-eval's tasks of these names). Metric `contains`, in percent.
RECALL_TASKS = ["swde", "squad_completion", "fda", "triviaqa", "nq_open", "drop"]
SUITES["recall"] = list(RECALL_TASKS)

# RULER suites: task -> context lengths. `ruler` is the paper's Table 3 grid; `ruler-full` all eight NIAH tasks.
RULER_GRIDS: dict[str, dict[str, list[int]]] = {
    "ruler": PAPER_GRID,
    "ruler-full": {task: FULL_LENGTHS for task in TASKS},
    "table5": {"niah_single_2": [4096], "niah_single_3": [2048], "niah_multikey_1": [4096]},  # Table 5's cells
}
for _name, _grid in RULER_GRIDS.items():
    SUITES[_name] = list(_grid)
# Table 5 (gate ablations; pass --gate-ablation): Wiki./LAMBADA ppl, common-sense Avg., its RULER cells, recall Avg.
SUITES["table5"] = ["wikitext", "lambada_openai", *_COMMONSENSE, *RULER_GRIDS["table5"], *RECALL_TASKS]

# Metrics reported in percent (lm-eval gives fractions); perplexities stay as they are.
PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "em", "f1", "contains", "string_match_all"}


def suite_tasks(name: str) -> list[str]:
    from .errors import UserError

    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return list(SUITES[name])
