"""lm-eval task definitions shipped with gdn2-eval (imported as ``gdn2_eval.tasks``)."""
