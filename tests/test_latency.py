"""The latency budget: parsing, the staircase finder, the latency model's accuracy against measured whole-model
latency, the table cache, unreachable targets, and agreement with `prunecli bench`'s gate."""

from __future__ import annotations

import json

import pytest

RESNET = "tinynets:tiny_resnet:width=64"
MOBILE = "tinynets:tiny_mobile:width=64"
SHAPE = "1,3,96,96"
VGG = "tinynets:tiny_vgg:width=32"  # four single-layer groups: fine channel steps for the measured fit


@pytest.fixture
def shared_cache(tmp_path_factory, monkeypatch, request):
    """One latency cache for the tests of this module (the staircase probe and layer tables are measured once); the
    stand-in machine's tables (see conftest's ``layer_timing``) in a cache of their own."""
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("layer_timing", "measured") if callspec else "measured"
    root = tmp_path_factory.getbasetemp() / f"latency-cache-{kind}"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root


@pytest.mark.parametrize("text,value,absolute", [
    ("0.6", 0.6, False), ("3ms", 3.0, True), ("3 ms", 3.0, True), ("800us", 0.8, True), ("0.02s", 20.0, True),
    (".5", 0.5, False),
])
def test_latency_budgets_parse(text, value, absolute):
    from prunecli.plan.targets import LatencyTarget

    budget = LatencyTarget.parse(text)
    assert budget.absolute is absolute
    assert budget.value == pytest.approx(value)
    assert budget.resolve(10.0) == pytest.approx(value if absolute else value * 10.0)


@pytest.mark.parametrize("text,message", [
    ("2", "add a unit, e.g. 2ms"), ("1", "must be in (0, 1)"), ("0", "must be > 0"), ("0ms", "must be > 0"),
    ("fast", "not a latency budget"), ("3 sec", "not a latency budget"), ("nan", "not a latency budget"),
])
def test_bad_latency_budgets_are_refused(text, message):
    from prunecli.plan.targets import LatencyTarget

    with pytest.raises(ValueError, match=None) as info:
        LatencyTarget.parse(text)
    assert message in str(info.value)


@pytest.mark.parametrize("args,message", [
    (["--latency", "2"], "add a unit, e.g. 2ms"),
    (["--latency", "0.6", "--no-latency"], "drop --no-latency"),
    (["--latency", "0.6", "--latency-stat", "p99"], "--latency-stat 'p99' is not one of block-min, min, p10, p50, p90"),
    (["--latency", "0.6", "--provider", "gpu"], "--provider 'gpu' is not one of cpu, cuda, tensorrt"),
    (["--latency", "0.6", "--threads", "0"], "--threads 0 must be >= 1"),
    (["--latency", "0.6", "--latency-batch", "0"], "--latency-batch 0 must be >= 1"),
    (["--latency", "0.6", "--allocation", "latncy"], "did you mean 'latency'"),
    (["--latency", "0.6", "--allocation", "learned", "--data", "synthetic:64"],
     "--allocation learned searches its ratios for a FLOPs or params budget"),
])
def test_latency_flags_usage_errors(cli, tmp_path, args, message):
    r = cli("prune", RESNET, "--input-shape", SHAPE, *args, "--out", tmp_path / "o")
    assert r.code == 2, r
    assert message in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_missing_provider_is_exit_4_before_loading(cli, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    r = cli("prune", "missing.pt", "--latency", "0.6", "--provider", "cuda", "--out", tmp_path / "o")
    assert r.code == 4, r
    assert "--provider cuda: CUDAExecutionProvider is not available" in r.stderr
    assert not (tmp_path / "o").exists()


def test_find_block_reads_the_staircase():
    from prunecli.runtime.latency_model import find_block

    stairs = {c: (1.0 if c % 4 == 0 else 1.3) * (1 + c / 100) for c in range(33, 65)}
    block, penalty = find_block(stairs)
    assert block == 4
    assert penalty == pytest.approx(0.3, abs=0.05)
    smooth = {c: 1 + c / 100 for c in range(33, 65)}
    assert find_block(smooth) == (1, 0.0)
    eights = {c: (1.0 if c % 8 == 0 else 1.2) for c in range(33, 65)}
    assert find_block(eights)[0] == 8


def _uniform_counts(analysis, fraction, multiple=8):
    return {g.root: max(g.min_keep, int(round(g.channels * fraction / multiple)) * multiple) for g in analysis.groups}


@pytest.mark.slow  # not yet reliable on a noisy 2-core VM: single-layer timings move run to run (issue 17 note)
@pytest.mark.parametrize("spec", [RESNET, MOBILE])
def test_latency_model_predicts_measured_whole_model_latency(shared_cache, spec):
    """The table's prediction for a plan is within 15% of the whole model measured interleaved with dense."""
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.constraints import prunable_groups
    from prunecli.plan.latency_bench import LatencyBench
    from prunecli.plan.targets import LatencySettings, LatencyTarget

    loaded = load_model(spec, input_shape=SHAPE)
    analysis, _ = prunable_groups(loaded)
    config = PruneConfig(latency=LatencyTarget(0.6), latency_settings=LatencySettings(threads=2))
    with LatencyBench(loaded, config, analysis, {}) as bench:
        assert bench.model.predict({}) == pytest.approx(bench.dense_ms)
        for fraction in (0.75, 0.5):
            counts = _uniform_counts(analysis, fraction)
            predicted = bench.predict(counts)
            measured, _, ratio = bench.measure(counts)
            assert ratio.runs >= 60
            assert abs(predicted / measured - 1) < 0.15, (spec, fraction, predicted, measured)
            assert measured < 1.0


def _prune(cli, out, *args):
    r = cli("prune", VGG, "--input-shape", SHAPE, "--threads", "2", "--out", out, "--json", *args)
    return r, (json.loads(r.stdout) if r.code in (0, 1) and r.stdout.strip() else None)


def test_the_table_is_cached_per_runtime(shared_cache, layer_timing):
    """A second latency model of the same model measures nothing: every layer and the staircase come from disk."""
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.constraints import prunable_groups
    from prunecli.plan.latency_bench import LatencyBench
    from prunecli.plan.targets import LatencySettings, LatencyTarget

    loaded = load_model(MOBILE, input_shape=SHAPE)
    analysis, _ = prunable_groups(loaded)
    config = PruneConfig(latency=LatencyTarget(0.6), latency_settings=LatencySettings(threads=2))
    with LatencyBench(loaded, config, analysis, {}) as first:
        measured = first.model.table.measured
        assert first.model.table.path.is_file()
    with LatencyBench(loaded, config, analysis, {}) as second:
        assert second.model.table.measured == 0
        assert second.model.table.reused >= measured > 0
        assert second.model.layers_dense_ms == pytest.approx(first.model.layers_dense_ms)
    # another thread count is another runtime: its own cache file
    other = PruneConfig(latency=LatencyTarget(0.6), latency_settings=LatencySettings(threads=1))
    with LatencyBench(loaded, other, analysis, {}) as third:
        assert third.model.table.path != first.model.table.path and third.model.table.measured > 0


@pytest.mark.slow  # the measured fit on 2-group test nets: steps are coarse and the VM noisy (issue 17 note)
def test_latency_budget_is_met_and_the_table_is_reused(cli, shared_cache, tmp_path):
    r, report = _prune(cli, tmp_path / "a", "--latency", "0.6")
    assert r.code == 0, r
    lat = report["budget"]["latency"]
    assert report["config"]["allocation"] == "latency"
    assert lat["met"] and lat["within_window"]
    assert 0.6 * 0.95 <= lat["measured"] <= 0.6
    assert lat["ci95"][1] <= 0.6 + 1e-9
    assert lat["threads"] == 2 and lat["provider"] == "CPUExecutionProvider" and lat["cpu"]
    assert lat["runs"] >= 60 and lat["fit_probes"]
    assert abs(lat["prediction_error"]) < 0.15
    assert report["achieved"]["flops_ratio"] < 1.0
    first = lat["latency_model"]["table"]
    assert first["measured"] > 0
    # a second prune of the same model measures no table entry: every layer comes from the cache
    r, again = _prune(cli, tmp_path / "b", "--latency", "0.7", "--flops", "0.9")
    assert r.code == 0, r
    table = again["budget"]["latency"]["latency_model"]["table"]
    assert table["measured"] == 0 and table["reused"] >= first["measured"]
    assert again["budget"]["flops"]["met"] and again["budget"]["latency"]["met"]


@pytest.mark.slow
def test_absolute_latency_budget(cli, shared_cache, tmp_path):
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.constraints import prunable_groups
    from prunecli.plan.latency_bench import LatencyBench
    from prunecli.plan.targets import LatencySettings, LatencyTarget

    loaded = load_model(VGG, input_shape=SHAPE)
    analysis, _ = prunable_groups(loaded)
    config = PruneConfig(latency=LatencyTarget(0.6), latency_settings=LatencySettings(threads=2))
    with LatencyBench(loaded, config, analysis, {}) as bench:
        dense_ms = bench.dense_ms
    target = f"{0.65 * dense_ms:.4f}ms"
    r, report = _prune(cli, tmp_path / "o", "--latency", target)
    assert r.code == 0, r
    lat = report["budget"]["latency"]
    assert lat["unit"] == "ms" and lat["requested_as"] == "milliseconds"
    assert lat["met"] and lat["measured"] <= float(target[:-2])
    assert lat["measured"] == pytest.approx(lat["measured_ms"])


def test_unreachable_latency_exits_2_before_any_work(cli, shared_cache, tmp_path, layer_timing, request):
    if layer_timing == "stand-in":  # whole models too: the fit's probes would wait on a busy machine's noise
        request.getfixturevalue("weight_cost_machine")
    r = cli("prune", RESNET, "--input-shape", SHAPE, "--threads", "2", "--latency", "0.01", "--data", "synthetic:64",
            "--epochs", "3", "--out", tmp_path / "o")
    assert r.code == 2, r
    assert "is not reachable" in r.stderr and "measures" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing exported, no checkpoint: fine-tuning never started


@pytest.mark.slow
def test_bench_gate_agrees_right_after_prune(cli, shared_cache, tmp_path):
    """10 of 10 consecutive tries: `prune --latency 0.6`, then the CI gate at the same target passes (the VGG at
    width 64: 6 ms a run here; at width 32, 1.8 ms runs time with 5% noise, as wide as the window)."""
    vgg = "tinynets:tiny_vgg:width=64"
    r = cli("export", vgg, "--input-shape", SHAPE, "--out", tmp_path / "dense.onnx")
    assert r.code == 0, r
    verdicts = []
    for attempt in range(10):
        r = cli("prune", vgg, "--input-shape", SHAPE, "--threads", "2", "--out", tmp_path / f"pruned{attempt}",
                "--json", "--latency", "0.6")
        assert r.code == 0, r
        report = json.loads(r.stdout)
        gate = cli("bench", tmp_path / f"pruned{attempt}", "--baseline", tmp_path / "dense.onnx", "--threads", "2",
                   "--max-latency-ratio", "0.6", "--runs", "200", "--json")
        verdicts.append((report["budget"]["latency"]["measured"], gate.code,
                         json.loads(gate.stdout)["ratio"]["p50"] if gate.stdout.strip() else None))
    assert all(code == 0 for _, code, _ in verdicts), verdicts


def test_latency_allocation_serves_a_flops_budget(cli, shared_cache, tmp_path, layer_timing):
    """--allocation latency with a FLOPs budget: the FLOPs fit stays exact, the order comes from the latency model."""
    # --round-to 1: four single-layer groups at the staircase's multiple of 8 are too coarse for a 1% FLOPs fit
    r, report = _prune(cli, tmp_path / "o", "--flops", "0.5", "--allocation", "latency", "--round-to", "1")
    assert r.code == 0, r
    assert report["budget"]["flops"]["met"] and report["budget"]["flops"]["gap"] <= 0.01
    assert report["latency_model"]["table"]["file"]
    assert "latency" not in report["budget"]


def test_inspect_latency_prints_shares_and_writes_a_plot(cli, shared_cache, tmp_path, layer_timing):
    r = cli("inspect", MOBILE, "--input-shape", SHAPE, "--latency", "--threads", "2", "--plot", tmp_path / "lat.png",
            "--json")
    assert r.code == 0, r
    doc = json.loads(r.stdout)
    lat = doc["latency"]
    assert lat["dense_ms"] > 0 and lat["staircase"]["block"] >= 1
    shares = {g["root"]: g["latency_share"] for g in lat["groups"]}
    assert set(shares) == {g["root"] for g in doc["groups"]}
    assert all(0 <= s <= 1 for s in shares.values()) and max(shares.values()) > 0.05
    assert all(len(g["curve"]) >= 2 for g in lat["groups"])
    assert (tmp_path / "lat.png").stat().st_size > 1000


class _Runtime:
    """A deterministic stand-in for the runtime: 'true' latency of a plan, a latency model that is off by a factor,
    and a record of what was measured."""

    def __init__(self, groups: dict, bias: float = 1.15, noise: float = 0.0) -> None:
        self.groups, self.bias, self.noise, self.measured = groups, bias, noise, []

    def true(self, counts: dict) -> float:  # fraction of dense: quadratic in the kept share, like a conv
        return 0.05 + 0.95 * sum((counts[r] / n) ** 2 for r, n in self.groups.items()) / len(self.groups)

    def predict(self, counts: dict) -> float:
        return min(1.0, self.true(counts) * self.bias)

    def measure(self, counts: dict):
        self.measured.append(dict(counts))
        value = self.true(counts)
        from prunecli.runtime.timing import Ratio

        return value, value * (1 + self.noise + 0.01), Ratio("p50", value, value * 0.99, value * 1.01, value, 1.0, 100)


def _order(groups: dict, step: int) -> list:
    order, left = [], dict(groups)
    while any(k > step for k in left.values()):
        root = max(left, key=lambda r: left[r] / groups[r])
        left[root] -= step
        order.append(root)
    return order


def _after(groups, order, step):
    def counts_after(t):
        counts = dict(groups)
        for root in order[:t]:
            counts[root] -= step
        return counts
    return counts_after


@pytest.mark.parametrize("target,bias", [(0.75, 1.15), (0.5, 0.85), (0.3, 1.3), (0.3, 0.8)])
def test_fit_lands_in_the_window_despite_a_biased_model(target, bias):
    from prunecli.plan.latency_fit import fit_latency

    groups = {"a": 64, "b": 128, "c": 256}
    runtime = _Runtime(groups, bias)
    order = _order(groups, 8)
    fit = fit_latency(_after(groups, order, 8), len(order), target, runtime.predict, runtime.measure)
    assert target * 0.95 <= fit.probe.measured <= target * (1 - 0.015)
    assert fit.probe.high <= target
    assert runtime.true(fit.counts) == pytest.approx(fit.probe.measured)
    assert len(runtime.measured) <= 12


def test_fit_adjusts_single_groups_when_one_step_is_too_coarse():
    """Two groups, steps of a quarter of each: no prefix of the order lands in the window; a single-group
    adjustment does."""
    from prunecli.plan.latency_fit import fit_latency

    groups = {"a": 32, "b": 32}
    runtime = _Runtime(groups, bias=1.0)
    order = _order(groups, 8)
    prefixes = [runtime.true(_after(groups, order, 8)(t)) for t in range(len(order) + 1)]
    target = 0.57  # the window [0.5415, 0.5615] holds no prefix (0.584, 0.436) but (8, 32): 0.555
    assert not any(target * 0.95 <= v <= target * 0.985 for v in prefixes)

    def neighbours(counts):
        out = []
        for r in groups:
            for d in (8, -8):
                if 8 <= counts[r] + d <= groups[r]:
                    out.append({**counts, r: counts[r] + d})
        return out

    with pytest.raises(Exception):
        fit_latency(_after(groups, order, 8), len(order), target, runtime.predict, runtime.measure)
    fit = fit_latency(_after(groups, order, 8), len(order), target, runtime.predict, runtime.measure,
                      neighbours=neighbours)
    assert target * 0.95 <= fit.probe.measured <= target * 0.985 and fit.t == -2


def test_fit_refuses_an_unreachable_target_with_the_measured_minimum():
    from prunecli.core.errors import UsageError
    from prunecli.plan.latency_fit import fit_latency

    groups = {"a": 64, "b": 64}
    runtime = _Runtime(groups, bias=1.0)
    order = _order(groups, 8)
    with pytest.raises(UsageError, match="is not reachable: with every channel step applied the model measures"):
        fit_latency(_after(groups, order, 8), len(order), 0.02, runtime.predict, runtime.measure)
    assert runtime.measured == [_after(groups, order, 8)(len(order))]  # one measurement: the deepest plan


def test_measuring_process_holds_onnxruntime_only_and_shares_one_pool(tmp_path):
    """Latencies are timed in a child process without torch; its sessions are opened, timed interleaved, dropped;
    a relative path still opens after this process changed directory."""
    import os

    from prunecli.runtime.latency_model import _relu_bytes
    from prunecli.runtime.timing import RuntimeConfig, runtime_for

    config = RuntimeConfig(threads=1, warmup=2)
    runtime = runtime_for(config)
    assert runtime_for(config) is runtime  # one per provider and thread count
    facts = runtime.call("facts")
    assert facts["torch_loaded"] is False and facts["pid"] != os.getpid()
    (tmp_path / "relu.onnx").write_bytes(_relu_bytes((1, 8, 4, 4)))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        a = runtime.open("a", "relu.onnx", config, (1, 8, 4, 4))
    finally:
        os.chdir(cwd)
    b = runtime.open("b", _relu_bytes((1, 8, 16, 16)), config, (1, 8, 16, 16))
    assert (a.batch, a.provider, str(b.path)) == (1, "CPUExecutionProvider", "<memory>")
    runtime.measure([a, b], 12, block=4)
    assert len(a.samples_ms) == len(b.samples_ms) == 12 and min(a.samples_ms) > 0
    ratio = runtime.ratio(a, b, "p50", halfwidth=1.0, block=4, min_runs=8, max_runs=8)
    assert ratio.runs == 8 and len(a.samples_ms) == 8  # fresh samples for a ratio
    assert runtime.call("facts")["open_sessions"] == 2
    runtime.drop(a, b)
    assert runtime.call("facts")["open_sessions"] == 0
    assert not list(runtime.dir.glob("*.onnx"))  # bytes were written for the open only


def test_a_dead_measuring_process_is_one_error_and_is_restarted():
    from prunecli.core.errors import RuntimeFailure
    from prunecli.runtime.timing import RuntimeConfig, runtime_for

    config = RuntimeConfig(threads=1)
    runtime = runtime_for(config)
    runtime.proc.kill()
    runtime.proc.wait()
    with pytest.raises(RuntimeFailure, match="the onnxruntime measuring process stopped"):
        runtime.call("facts")
    fresh = runtime_for(config)
    assert fresh is not runtime and fresh.call("facts")["torch_loaded"] is False


def test_a_floor_the_prediction_misses_is_found_unreachable_by_measuring_the_deepest_plan():
    """An INT8-like runtime: latency stops falling at 0.6 of dense while the latency model predicts it keeps
    falling. After two probes too slow and none fast enough the deepest plan is measured: exit 2 naming it."""
    from prunecli.core.errors import UsageError
    from prunecli.plan.latency_fit import fit_latency

    groups = {"a": 64, "b": 128, "c": 256}

    class Floored(_Runtime):
        def true(self, counts):
            return max(0.6, super().true(counts))

    runtime = Floored(groups, bias=1.0)
    runtime.predict = lambda counts: _Runtime.true(runtime, counts)  # the model does not know the floor
    order = _order(groups, 8)
    with pytest.raises(UsageError, match="not reachable: with every channel step applied the model measures 0.6"
                                         r".*\(INT8 hint\)"):
        fit_latency(_after(groups, order, 8), len(order), 0.5, runtime.predict, runtime.measure,
                    unreachable_hint=" (INT8 hint)")
    assert len(runtime.measured) == 3 and runtime.measured[-1] == _after(groups, order, 8)(len(order))


def test_a_target_the_least_pruning_already_meets_keeps_it():
    """INT8 can make the dense model itself fast enough: the fit keeps the least pruning allowed (t_min), not a
    deeper plan that lands in the window by being slower."""
    from prunecli.plan.latency_fit import fit_latency

    groups = {"a": 64, "b": 128}
    runtime = _Runtime(groups, bias=1.0)
    runtime.true = lambda counts: 0.55  # flat: no plan is faster or slower than the dense one
    runtime.predict = lambda counts: 0.55
    order = _order(groups, 8)
    fit = fit_latency(_after(groups, order, 8), len(order), 0.62, runtime.predict, runtime.measure)
    assert fit.t == 0 and fit.counts == groups and len(runtime.measured) == 1
