"""What `prunecli compare` runs: methods x budgets x seeds (and the from-scratch controls), each a `prune` request;
the points' identities, and the flags a point's result depends on (a rerun that changes one is refused)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunecli.core.errors import UsageError

SCRATCH = "scratch"  # the control: the pruned architecture re-initialised and trained for the same epochs
METRICS = ("flops", "params", "latency")


@dataclass(frozen=True)
class Method:
    """One ``--methods`` entry: an allocation config (its type is the allocation) and a channel criterion.
    ``name`` is how tables and keys spell it (``uniform:l1``; ``learned``, whose channels are chosen by its search)."""

    name: str
    allocation: object  # an Allocation config: Uniform(), Global(...), Sensitivity(...), Learned(...), Latency(...)
    criterion: str = "l1"

    @property
    def allocation_name(self) -> str:
        from prunecli.plan.allocators import ALLOCATORS

        return ALLOCATORS.name_of(self.allocation)

    @property
    def latency_aware(self) -> bool:
        """It spends a latency budget by measured cost (the latency allocation)."""
        return self.allocation_name == "latency"

    @property
    def takes_latency(self) -> bool:
        """It can be fitted to a latency budget alone (learned searches for a FLOPs or params budget)."""
        return self.allocation_name != "learned"

    @property
    def search_epochs(self) -> int:
        """Epochs of training the allocation itself spends (the learned allocator's search): counted in --epochs."""
        return getattr(self.allocation, "epochs", 0) if self.allocation_name == "learned" else 0


@dataclass(frozen=True)
class Budget:
    """One budget point: ``flops=0.5`` (a fraction of dense), ``params=0.3``, ``latency=0.5`` (of dense, measured)."""

    metric: str
    value: float

    @property
    def key(self) -> str:
        return f"{self.metric}={self.value:g}"

    @staticmethod
    def parse_all(texts) -> tuple["Budget", ...]:
        """``--budgets flops=0.5,0.25`` (repeatable; ``;`` or spaces also separate metrics) -> budgets in order
        of appearance, duplicates dropped."""
        import math

        out: list[Budget] = []
        for text in texts:
            for part in text.replace(";", " ").split():
                metric, sep, values = part.partition("=")
                if not sep or metric not in METRICS or not values:
                    raise UsageError(f"--budgets {part!r}: write METRIC=F[,F...] with METRIC one of "
                                     f"{', '.join(METRICS)} and fractions of the dense model, e.g. flops=0.5,0.25")
                for v in values.split(","):
                    try:
                        value = float(v)
                    except ValueError:
                        value = math.nan
                    if not (math.isfinite(value) and 0 < value < 1):
                        raise UsageError(f"--budgets {part!r}: {v!r} is not a fraction in (0, 1) of the dense model")
                    budget = Budget(metric, value)
                    if budget not in out:
                        out.append(budget)
        if not out:
            raise UsageError("--budgets: give at least one budget, e.g. --budgets flops=0.5,0.25")
        return tuple(out)


def parse_ints(flag: str, text: str, *, least: int) -> tuple[int, ...]:
    """``0,1,2`` -> (0, 1, 2); duplicates dropped, order kept; one line naming ``flag`` otherwise."""
    values: list[int] = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: write integers separated by commas, e.g. 0,1,2") from None
        if value < least:
            raise UsageError(f"{flag} {text!r}: {value} must be >= {least}")
        if value not in values:
            values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class Point:
    """One run of the grid: ``method`` (a Method, or :data:`SCRATCH`) at ``budget`` with ``seed``."""

    budget: Budget
    method: object  # Method | str (SCRATCH)
    seed: int
    arch_of: object = None  # SCRATCH: the Method whose pruned architecture is trained from scratch

    @property
    def method_name(self) -> str:
        return self.method if isinstance(self.method, str) else self.method.name

    @property
    def key(self) -> str:
        return f"{self.budget.key}|{self.method_name}|seed={self.seed}"

    @property
    def dirname(self) -> str:
        """The point's bundle directory under DIR/points/ (no characters a file system may refuse)."""
        method = self.method_name.replace(":", "-").replace("/", "-")
        return f"{self.budget.metric}{self.budget.value:g}-{method}-seed{self.seed}"


def points(methods: tuple, budgets: tuple, seeds: tuple, *, scratch: bool, equal_latency: bool) -> list[Point]:
    """The grid in the order it runs: latency budgets first (an unreachable latency target is then refused before
    any point trains), budgets in the order given, seeds, then methods. At a latency budget only latency-aware
    methods run, unless ``equal_latency``: then every method that can take a latency budget alone (not learned, whose
    search needs a FLOPs or params budget) is fitted to the same measured latency (compared at equal speed, not equal
    FLOPs). ``scratch``: per budget and seed, the architecture of the budget's first method
    that runs there (uniform:l1 by default; latency at a latency budget) re-initialised and trained."""
    ordered = [b for b in budgets if b.metric == "latency"] + [b for b in budgets if b.metric != "latency"]
    grid: list[Point] = []
    for budget in ordered:
        here = [m for m in methods
                if budget.metric != "latency" or m.latency_aware or (equal_latency and m.takes_latency)]
        if not here:
            raise UsageError(f"--budgets {budget.key}: no method in --methods prunes to a latency budget; add "
                             "`latency` to --methods, or pass --equal-latency to fit every method to it")
        for seed in seeds:
            grid += [Point(budget, m, seed) for m in here]
            if scratch:
                grid.append(Point(budget, SCRATCH, seed, arch_of=here[0]))
    return grid


# the flags a point's result depends on: a rerun into the same DIR must give the same ones (README "compare")
POINT_FLAGS = ("model", "arch", "weights", "input_shape", "preset", "data", "train_subset", "epochs", "lr",
               "optimizer", "weight_decay", "batch_size", "distill", "distill_weight", "temperature", "search_epochs",
               "round_to", "ignore", "min_channels", "max_group_prune", "provider", "threads", "latency_batch",
               "latency_stat", "amp", "sensitivity_levels", "sensitivity_metric", "sensitivity_batches")


def changed_flags(recorded: dict, now: dict) -> list[str]:
    """The point flags whose values differ between the recorded run and this one, as ``--flag old -> new``."""
    out = []
    for name in POINT_FLAGS:
        if recorded.get(name) != now.get(name):
            out.append(f"--{name.replace('_', '-')} {recorded.get(name)!r} -> {now.get(name)!r}")
    return out


def flags_json(flags: dict) -> dict:
    """The point flags as JSON values (tuples as lists), for compare.json and the resume check."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items() if k in POINT_FLAGS}


def describe_method(method) -> dict:
    if isinstance(method, str):
        return {"name": method}
    settings = dataclasses.asdict(method.allocation) if dataclasses.is_dataclass(method.allocation) else {}
    return {"name": method.name, "allocation": method.allocation_name, "criterion": method.criterion,
            "allocation_settings": settings}
