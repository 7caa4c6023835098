"""The statistic a latency verdict is decided on, and the warning when the machine moved the ratio more than the
window while it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prunecli.runtime import timing
from prunecli.runtime import ratio as ratios
from prunecli.runtime.ratio import Ratio, ratio_of
from prunecli.runtime.timing import Timed

TRUE = 0.5  # the pruned model costs half the dense one when nothing else runs


def _pair(slow_blocks=(), spike=4.0, block=10, blocks=40, seed=0, jitter=1.0):
    """Interleaved samples of a model (5 ms) and its baseline (10 ms) with small jitter; in ``slow_blocks`` another
    process steals the cores for a while: a spell adds ``spike`` ms to most runs of both blocks of the pair."""
    rng = np.random.default_rng(seed)
    model, baseline = Timed("m", "m.onnx", 1, 1, (1,), "cpu"), Timed("b", "b.onnx", 2, 1, (1,), "cpu")
    for i in range(blocks):
        for timed, ms in ((model, 5.0), (baseline, 10.0)):
            runs = ms * (1 + rng.exponential(0.01, block))
            if i in slow_blocks:
                hit = rng.random(block) < 0.8
                runs = runs + hit * spike * (1 + jitter * rng.random(block))
            timed.samples_ms.extend(runs.tolist())
    return model, baseline


def test_block_minima_see_through_slow_spells_that_move_the_median():
    slow = {i for i in range(40) if i % 10 < 7}  # seven blocks in ten hit: most runs are slow
    model, baseline = _pair(slow)
    p50 = ratio_of(model, baseline, "p50", 10)
    robust = ratio_of(model, baseline, "block-min", 10)
    assert abs(p50.ratio / TRUE - 1) > 0.05  # the deployment statistic is moved by the neighbour
    assert robust.ratio == pytest.approx(TRUE, rel=0.02)  # the fastest run of most blocks escapes it
    # p50 and p90 are reported beside the decision, from the same runs, with intervals
    assert set(robust.others) == {"p50", "p90"}
    assert robust.others["p50"]["ratio"] == pytest.approx(p50.ratio)
    low, high = robust.others["p50"]["ci95"]
    assert low <= p50.ratio <= high


@pytest.mark.parametrize("stat", ratios.RATIO_STATS)
def test_every_statistic_is_the_ratio_on_a_quiet_machine(stat):
    model, baseline = _pair()
    r = ratio_of(model, baseline, stat, 10)
    assert r.stat == stat and r.ratio == pytest.approx(TRUE, rel=0.03)
    assert r.low <= r.ratio <= r.high and r.runs == 400
    assert r.spread < 0.05


def test_a_spell_in_one_quarter_is_the_spread_and_a_steady_run_has_none():
    quiet = ratio_of(*_pair(), "p50", 10)
    # the second quarter of the run (blocks 10-19) slowed down: the p50 ratio of that quarter moves
    spell = ratio_of(*_pair(slow_blocks=range(10, 20), spike=6.0), "p50", 10)
    assert quiet.spread < 0.02
    assert spell.spread > 0.05


def test_steady_contention_is_seen_as_typical_and_fastest_runs_disagreeing():
    """Another process on the cores for the whole run: the ratio does not drift (no spread), but the typical runs
    are slowed and the fastest are not - the p50 and block-min ratios disagree, and that is the noise."""
    steady = ratio_of(*_pair(slow_blocks=range(40), jitter=0.05), "p50", 10)
    assert steady.spread < 0.05 < steady.disagreement
    assert steady.noise == steady.disagreement
    quiet = ratio_of(*_pair(), "p50", 10)
    assert quiet.noise < 0.02


def test_the_latency_stat_flag_names_the_choices(cli, tmp_path):
    r = cli("prune", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--latency", "0.6", "--latency-stat", "p99",
            "--out", tmp_path / "o")
    assert r.code == 2
    assert "--latency-stat 'p99' is not one of block-min, min, p10, p50, p90" in r.stderr
    assert not (tmp_path / "o").exists()


def _noisy_ratio(spread):
    def ratio(self, model, baseline, stat="p50", **_):
        model.samples_ms[:], baseline.samples_ms[:] = [1.0] * 40, [2.0] * 40
        others = {s: {"ratio": 0.5, "ci95": [0.49, 0.51], "model_ms": 1.0, "baseline_ms": 2.0} for s in ("p50", "p90")}
        return Ratio(stat, 0.5, 0.495, 0.505, 1.0, 2.0, 40, spread, others)

    return ratio


@pytest.mark.parametrize("spread,warned", [(0.08, True), (0.01, False)])
def test_prune_warns_when_the_final_ratio_moved_more_than_the_window(cli, tmp_path, monkeypatch, layer_timing,
                                                                      spread, warned):
    """A verdict met on a machine that moved the ratio by more than the window: exit 0 with one warning line that
    says what margin it would need; report.json says so too."""
    monkeypatch.setattr(timing.Runtime, "ratio", _noisy_ratio(spread))
    monkeypatch.setattr(timing, "settled_ms", lambda *a, **k: 2.0)
    r = cli("prune", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--latency", "0.52", "--latency-stat",
            "block-min", "--round-to", "1", "--json", "--out", tmp_path / "o")
    assert r.code == 0, r
    lat = json.loads(r.stdout)["budget"]["latency"]
    assert lat["stat"] == "block-min" and lat["spread"] == pytest.approx(spread) and lat["noisy"] is warned
    assert lat["reported"]["p50"]["ci95"] == [0.49, 0.51] and "p90" in lat["reported"]
    # decided by the fit on the accepted plan: its process and one fresh one agree, so the median of three cannot
    # differ and the third is not measured; the bundle's model has the plan's graph, so it is not measured again
    assert lat["processes"] == [0.5, 0.5]
    assert json.loads(r.stdout)["latency"]["measured_on"] == "the fit's accepted plan (same graph)"
    lines = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    if warned:
        assert len(lines) == 1 and "measured with 8.0% noise" in lines[0] and "margin of 8%" in lines[0]
    else:
        assert not lines


def test_bench_warns_when_the_gate_ratio_moved_more_than_the_window(cli, tmp_path, monkeypatch):
    from prunecli.runtime import bench

    r = cli("export", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--out", tmp_path / "m.onnx")
    assert r.code == 0, r
    real = bench.ratio_of

    def moved(*args, **kwargs):
        r = real(*args, **kwargs)
        return Ratio(r.stat, r.ratio, r.low, r.high, r.model_ms, r.baseline_ms, r.runs, 0.12, r.others)

    monkeypatch.setattr(bench, "ratio_of", moved)
    r = cli("bench", tmp_path / "m.onnx", "--baseline", tmp_path / "m.onnx", "--runs", "40", "--warmup", "2",
            "--stat", "block-min", "--max-latency-ratio", "2", "--json")
    assert r.code == 0, r
    doc = json.loads(r.stdout)
    assert doc["ratio_decision"]["stat"] == "block-min" and "block-min" in doc["ratio"]
    gate = doc["constraints"][0]
    assert gate["stat"] == "block-min" and gate["noisy"] is True and gate["spread"] == pytest.approx(0.12)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "measured with 12.0% noise" in warnings[0]


def test_every_budget_statistic_is_measured_on_the_runtime(cli, tmp_path):
    """The real measuring process (no stand-in): the dense model's settled latency and a ratio on every statistic
    a latency budget may be decided on."""
    from prunecli.plan.targets import LATENCY_STATS
    from prunecli.runtime.timing import RuntimeConfig, runtime_for, settled_ms

    r = cli("export", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--out", tmp_path / "m.onnx")
    assert r.code == 0, r
    config = RuntimeConfig("cpu", 1, None, warmup=2)
    measuring = runtime_for(config)
    a = measuring.open("model", tmp_path / "m.onnx", config, (1, 3, 16, 16))
    b = measuring.open("baseline", tmp_path / "m.onnx", config, (1, 3, 16, 16))
    try:
        settled = {stat: settled_ms(measuring, b, stat) for stat in LATENCY_STATS}
        assert all(0 < ms < 3 * settled["p50"] for ms in settled.values())  # each from passes of its own
        for stat in LATENCY_STATS:
            ratio = measuring.ratio(a, b, stat, halfwidth=0.5, block=5, min_runs=20, max_runs=40)
            assert ratio.stat == stat and 0.2 < ratio.ratio < 5 and set(ratio.others) == {"p50", "p90"}
    finally:
        measuring.drop(a, b)


class _Fake:
    """A model the measuring loop can run: each run takes ``ms`` plus a little deterministic jitter."""

    def __init__(self, ms: float, seed: int) -> None:
        self.samples_ms, self.ms, self.rng = [], ms, np.random.default_rng(seed)

    def run_once(self) -> None:
        self.samples_ms.append(self.ms * (1 + self.rng.exponential(0.05)))


def test_a_candidate_clearly_outside_the_window_is_judged_without_a_narrow_interval():
    from prunecli.runtime.ratio import measure_ratio

    narrow = measure_ratio(_Fake(7.0, 1), _Fake(10.0, 2), "p50", halfwidth=0.002, max_runs=2000)
    early = measure_ratio(_Fake(7.0, 1), _Fake(10.0, 2), "p50", halfwidth=0.002, max_runs=2000, outside=[0.475, 0.49])
    assert early.ratio == pytest.approx(0.7, rel=0.03) and early.low > 0.49  # clearly too slow for a 0.5 target
    assert early.runs == 60 < narrow.runs  # stopped at the first check
    near = measure_ratio(_Fake(4.85, 1), _Fake(10.0, 2), "p50", halfwidth=0.01, max_runs=2000, outside=[0.475, 0.49])
    assert near.runs > 60 and near.halfwidth <= 0.01  # a candidate in the window is measured to the full interval


def test_a_candidate_clearly_inside_the_window_or_off_it_needs_no_narrow_interval():
    """Early judging the other way: an interval wholly inside the acceptance range stops at ``min_inside`` runs; a
    value outside the window needs an interval of +-``coarse`` only; a value inside the window with an interval
    across its edge is measured on."""
    from prunecli.runtime.ratio import measure_ratio

    inside = measure_ratio(_Fake(4.85, 1), _Fake(10.0, 2), "p50", halfwidth=0.001, max_runs=2000,
                           outside=[0.475, 0.4925], inside=[0.47, 0.5])
    assert inside.runs == 100 and 0.47 <= inside.low and inside.high <= 0.5 and inside.halfwidth > 0.001
    narrow = measure_ratio(_Fake(4.97, 1), _Fake(10.0, 2), "p50", halfwidth=0.001, max_runs=2000,
                           outside=[0.475, 0.4925])
    coarse = measure_ratio(_Fake(4.97, 1), _Fake(10.0, 2), "p50", halfwidth=0.001, max_runs=2000,
                           outside=[0.475, 0.4925], coarse=0.03)
    assert coarse.ratio > 0.4925 and coarse.halfwidth <= 0.03 and coarse.runs < narrow.runs
    edge = measure_ratio(_Fake(4.77, 1), _Fake(10.0, 2), "p50", halfwidth=0.004, max_runs=2000,
                         outside=[0.475, 0.4925], inside=[0.475, 0.5], coarse=0.03)
    assert edge.runs > 100 and (edge.halfwidth <= 0.004 or edge.low >= 0.475)


def test_two_processes_that_agree_decide_the_median_of_three(cli, tmp_path, monkeypatch):
    """The median of three is on the same side of every threshold as two processes that agree on it: the third is
    measured only when the first two disagree."""
    from prunecli.runtime.timing import RuntimeConfig, median_of_processes

    r = cli("export", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--out", tmp_path / "m.onnx")
    assert r.code == 0, r
    m, config = tmp_path / "m.onnx", RuntimeConfig("cpu", 1, None, warmup=1)

    def fresh_ratios(values, started):
        it = iter(values)

        def ratio(self, model, baseline, stat="p50", **_):
            started.append(self.proc.pid)
            v = next(it)
            return Ratio(stat, v, v * 0.99, v * 1.01, v, 1.0, 40, 0.01, {"p50": {"ratio": v, "ci95": [v, v]}})
        return ratio

    def verdict(r):  # the fit's acceptance for a 0.5 target: window [0.475, 0.4925], high <= 0.5
        return r.ratio < 0.475, r.ratio > 0.4925, r.high > 0.5

    first = Ratio("p50", 0.48, 0.475, 0.485, 0.48, 1.0, 40, 0.01, {"p50": {"ratio": 0.48, "ci95": [0.48, 0.48]}})
    started = []
    monkeypatch.setattr(timing.Runtime, "ratio", fresh_ratios([0.485, 0.40], started))
    agreed = median_of_processes(first, m, m, config, (1, 3, 16, 16), "p50", 0.02, verdict=verdict)
    assert len(started) == 1 and agreed.others["processes"] == [0.48, 0.485]
    assert agreed.ratio == pytest.approx(0.4825) and not any(verdict(agreed))
    started = []
    monkeypatch.setattr(timing.Runtime, "ratio", fresh_ratios([0.496, 0.47], started))
    split = median_of_processes(first, m, m, config, (1, 3, 16, 16), "p50", 0.02, verdict=verdict)
    assert len(set(started)) == 2 and split.others["processes"] == [0.48, 0.496, 0.47]
    assert split.ratio == pytest.approx(0.48)  # the third decided


def test_the_verdict_is_the_median_of_three_measuring_processes(cli, tmp_path, monkeypatch):
    """Which process a pair is timed in moves its ratio: the first measurement and two in fresh processes, the
    median decides, and their range is part of the noise."""
    from prunecli.runtime.timing import RuntimeConfig, median_of_processes

    r = cli("export", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--out", tmp_path / "m.onnx")
    assert r.code == 0, r
    fresh = iter([0.46, 0.49])
    started = []

    def ratio(self, model, baseline, stat="p50", **_):
        started.append(self.proc.pid)
        v = next(fresh)
        return Ratio(stat, v, v * 0.99, v * 1.01, v, 1.0, 40, 0.01, {"p50": {"ratio": v, "ci95": [v, v]}})

    monkeypatch.setattr(timing.Runtime, "ratio", ratio)
    first = Ratio("p50", 0.50, 0.495, 0.505, 0.5, 1.0, 40, 0.01, {"p50": {"ratio": 0.5, "ci95": [0.5, 0.5]}})
    m = tmp_path / "m.onnx"
    combined = median_of_processes(first, m, m, RuntimeConfig("cpu", 1, None, warmup=1), (1, 3, 16, 16), "p50", 0.02)
    assert len(set(started)) == 2  # two more processes, each its own
    assert combined.ratio == pytest.approx(0.49) and combined.others["processes"] == [0.50, 0.46, 0.49]
    assert combined.low == pytest.approx(0.49 * 0.99) and combined.high == pytest.approx(0.49 * 1.01)
    assert combined.spread == pytest.approx(0.04 / 0.49) and combined.noise == pytest.approx(0.04 / 0.49)
    assert combined.runs == 120


def test_candidates_are_timed_in_a_fresh_process_after_the_layer_tables():
    """A measuring process that timed the layer tables is replaced before candidates are timed in it."""
    from prunecli.runtime.timing import RuntimeConfig, fresh_runtime_for, runtime_for

    config = RuntimeConfig("cpu", 1, None)
    first = runtime_for(config)
    assert runtime_for(config) is first
    second = fresh_runtime_for(config)
    assert second is not first and second.alive() and not first.alive()
    assert runtime_for(config) is second


def test_the_graph_signature_sees_shapes_and_operators_not_weights(tmp_path):
    """The final check reuses the fit's measurement only for a model with the accepted plan's graph: the same
    shapes with other weights (other kept channels, fine-tuning) share a signature; other widths do not."""
    import torch

    from prunecli.runtime.export import export_onnx, graph_signature
    from tinynets import TinyPlain

    x = torch.randn(1, 3, 16, 16)
    paths = {}
    for name, width, seed in (("a", 16, 0), ("b", 16, 1), ("c", 12, 0)):
        torch.manual_seed(seed)
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(TinyPlain(width=width).eval(), x, paths[name], 18)
    assert paths["a"].read_bytes() != paths["b"].read_bytes()
    assert graph_signature(paths["a"]) == graph_signature(paths["b"])
    assert graph_signature(paths["a"]) != graph_signature(paths["c"])


def test_the_final_check_measures_again_when_the_bundle_graph_differs(cli, tmp_path, monkeypatch, layer_timing):
    """A bundle whose graph is not the accepted plan's (here: a signature that cannot match) is measured again in
    the final check, on the median of processes, not taken from the fit."""
    from prunecli.runtime import export

    monkeypatch.setattr(timing.Runtime, "ratio", _noisy_ratio(0.01))
    monkeypatch.setattr(timing, "settled_ms", lambda *a, **k: 2.0)
    real = export.graph_signature
    calls = []

    def other(path):
        calls.append(Path(path).name)
        return real(path) + ("-bundle" if Path(path).name == "model.onnx" else "")

    monkeypatch.setattr(export, "graph_signature", other)
    r = cli("prune", "tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--latency", "0.52", "--round-to", "1",
            "--json", "--out", tmp_path / "o")
    assert r.code == 0, r
    doc = json.loads(r.stdout)
    assert "model.onnx" in calls and "measured_on" not in doc["latency"]
    assert doc["latency"]["note"] == "the latency budget's final measurement"
    assert doc["budget"]["latency"]["processes"] == [0.5, 0.5] and doc["budget"]["latency"]["met"] is True
