"""`prunecli compare`: which method at which budget, accuracy against measured latency, as one command.

:mod:`.grid` (methods, budgets, points, the flags a point depends on) -> :mod:`.run` (every point through the
`prune` pipeline, resumable) -> :mod:`.summary` (statistics over seeds, verdicts on validation, the outputs)."""

from prunecli.pipeline.compare.grid import SCRATCH, Budget, Method, Point, parse_ints
from prunecli.pipeline.compare.run import CompareConfig, Reporter, check_compare_out, run_compare

__all__ = ["SCRATCH", "Budget", "CompareConfig", "Method", "Point", "Reporter", "check_compare_out", "parse_ints", "run_compare"]
