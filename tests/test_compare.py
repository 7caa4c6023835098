"""`prunecli compare`: the grid through `prune`, its tables against the points' reports, resume, a changed flag,
Ctrl-C, --equal-latency, --keep, the picture's series, and bad input."""

from __future__ import annotations

import json

import pytest

TINY = ["tinynets:tiny_resnet:width=16", "--input-shape", "1,3,8,8", "--data", "digits", "--train-subset", "256"]
GRID = ["--methods", "uniform:l1,global:l1", "--budgets", "flops=0.5", "--seeds", "0,1", "--epochs", "1",
        "--no-latency"]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """One finished compare (2 methods + the scratch control, 2 seeds, --keep all), shared by the tests that only
    read it."""
    from typer.testing import CliRunner

    from prunecli.cli.app import app

    out = tmp_path_factory.mktemp("compare") / "cmp"
    r = CliRunner().invoke(app, ["compare", *TINY, *GRID, "--scratch", "--keep", "all", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_table_numbers_are_the_points_reports(done_run):
    doc = json.loads((done_run / "compare.json").read_text())
    points = _lines(done_run / "points.jsonl")
    assert sorted(p["key"] for p in points) == sorted(
        f"flops=0.5|{m}|seed={s}" for m in ("uniform:l1", "global:l1", "scratch") for s in (0, 1))
    for p in points:  # every point's costs are its bundle's report's
        report = json.loads((done_run / p["bundle"] / "report.json").read_text())
        assert p["flops_ratio"] == pytest.approx(report["achieved"]["flops"] / report["dense"]["flops"])
        assert p["test_top1"] == report["accuracy"]["finetuned"]["top1"] and report["accuracy"]["split"] == "test"
        assert p["val_top1"] == max(h["val"]["top1"] for h in report["history"])  # the epoch selected on val
        assert p["flops_ratio"] <= 0.5 and report["budget"]["flops"]["met"]
        assert p["finetune_epochs"] == 1 and report["config"]["finetune"]["epochs"] == 1
        assert report["config"]["finetune"]["from_scratch"] is (p["method"] == "scratch")
    for row in doc["table"]:  # the table's means are the points' means
        mine = [p for p in points if p["method"] == row["method"]]
        for field in ("val_top1", "test_top1", "flops_ratio"):
            assert row[field] == pytest.approx(sum(p[field] for p in mine) / len(mine))
        assert row["seeds"] == [0, 1]
    # the scratch control trains the first method's architecture: same widths as uniform:l1 at each seed
    widths = {(p["method"], p["seed"]): p["widths"] for p in points}
    assert widths[("scratch", 0)] == widths[("uniform:l1", 0)]
    verdict = doc["verdicts"][0]
    assert verdict["best"] in ("uniform:l1", "global:l1") and verdict["kind"] in ("best", "tie")
    md = (done_run / "compare.md").read_text()
    assert "## flops=0.5" in md and "Recommendation" in md and doc["recommendation"] in md


def test_the_picture_has_a_line_per_method(done_run):
    doc = json.loads((done_run / "compare.json").read_text())
    png = done_run / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    series = {s["method"]: s for s in doc["plot"]["series"]}
    assert set(series) == {"uniform:l1", "global:l1", "scratch"} and series["scratch"]["control"]
    assert all(len(s["points"]) == 1 for s in series.values())


def test_resume_skips_done_points_and_grows_the_grid(done_run, tmp_path, cli, monkeypatch):
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(done_run, out)
    trained = []
    import prunecli.train.finetune as finetune

    real_fit = finetune.fit
    monkeypatch.setattr(finetune, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    monkeypatch.setattr("prunecli.pipeline.schedules.fit", finetune.fit)
    r = cli("compare", *TINY, *GRID, "--scratch", "--keep", "all", "--out", out)
    assert r.code == 0, r
    assert trained == []  # nothing trained the second time
    assert len(_lines(out / "points.jsonl")) == 6
    r = cli("compare", *TINY, *GRID[:-3], "--epochs", "1", "--no-latency", "--seeds", "0,1,2", "--scratch",
            "--keep", "all", "--out", out)
    assert r.code == 0, r
    assert len(trained) == 3  # seed 2 only: two methods and the control
    assert sorted({p["seed"] for p in _lines(out / "points.jsonl")}) == [0, 1, 2]


def test_a_changed_flag_is_refused_and_force_starts_over(done_run, tmp_path, cli):
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(done_run, out)
    before = (out / "points.jsonl").read_text()
    r = cli("compare", *TINY, *GRID[:-3], "--epochs", "2", "--no-latency", "--out", out)
    assert r.code == 2, r
    assert "--epochs 1 -> 2" in r.stderr and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "points.jsonl").read_text() == before
    r = cli("compare", *TINY, "--methods", "uniform:l1", "--budgets", "flops=0.5", "--seeds", "0", "--epochs", "2",
            "--no-latency", "--keep", "none", "--out", out, "--force")
    assert r.code == 0, r
    assert [p["key"] for p in _lines(out / "points.jsonl")] == ["flops=0.5|uniform:l1|seed=0"]
    # --keep none: every point keeps its report only
    assert [p.name for p in (out / "points").iterdir()] == ["flops0.5-uniform-l1-seed0"]
    assert sorted(f.name for f in (out / "points" / "flops0.5-uniform-l1-seed0").iterdir()) == ["report.json",
                                                                                                "report.md"]


def test_ctrl_c_keeps_finished_points(tmp_path, cli, monkeypatch):
    import prunecli.pipeline.prune as prune

    real, calls = prune.run_prune, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prune, "run_prune", interrupted)
    out = tmp_path / "cmp"
    r = cli("compare", *TINY, *GRID, "--out", out)
    assert r.code == 130, r
    assert [p["key"] for p in _lines(out / "points.jsonl")] == ["flops=0.5|uniform:l1|seed=0",
                                                                 "flops=0.5|global:l1|seed=0"]
    assert len(json.loads((out / "compare.json").read_text())["points"]) == 2
    monkeypatch.setattr(prune, "run_prune", real)
    r = cli("compare", *TINY, *GRID, "--out", out)
    assert r.code == 0, r
    assert len(_lines(out / "points.jsonl")) == 4
    # --keep best (the default): the bundle of each budget's best point on validation, the others' reports
    doc = json.loads((out / "compare.json").read_text())
    with_model = sorted(p.parent.name for p in (out / "points").glob("*/model.onnx"))
    assert with_model == [doc["verdicts"][0]["bundle"].split("/")[1]]
    assert len([p for p in (out / "points").iterdir() if (p / "report.json").is_file()]) == 4


def test_equal_latency_lands_flops_methods_at_the_latency_points_speed(tmp_path, cli, monkeypatch,
                                                                      weight_cost_machine, layer_timing):
    out = tmp_path / "cmp"
    r = cli("compare", "tinynets:tiny_vgg:width=32", "--input-shape", "1,3,32,32", "--data", "synthetic:64",
            "--methods", "uniform:l1", "--budgets", "latency=0.5", "--equal-latency", "--seeds", "0",
            "--epochs", "1", "--threads", "2", "--keep", "none", "--out", out)
    assert r.code == 0, r
    points = {p["method"]: p for p in _lines(out / "points.jsonl")}
    assert set(points) == {"latency:l1", "uniform:l1"}
    window = (0.5 * 0.95, 0.5)
    for p in points.values():
        measured = p["budget_latency"]["measured"]
        assert window[0] <= measured <= window[1] and p["budget_latency"]["met"], p
        assert p["latency_ratio"] == pytest.approx(measured, rel=0.01)  # the stand-in machine is exact
    # equal speed, not equal FLOPs: the FLOPs method lands elsewhere on FLOPs than the latency allocation
    assert round(points["uniform:l1"]["flops_ratio"], 3) != round(points["latency:l1"]["flops_ratio"], 3)


def test_the_grid_runs_latency_budgets_first_and_equal_latency_leaves_learned_out():
    from prunecli.pipeline.compare import SCRATCH, Budget, Method
    from prunecli.pipeline.compare.grid import points
    from prunecli.plan.allocators import Latency, Learned, Uniform

    methods = (Method("uniform:l1", Uniform()), Method("learned", Learned(epochs=1)), Method("latency:l1", Latency()))
    budgets = Budget.parse_all(["flops=0.5", "latency=0.5"])
    plain = points(methods, budgets, (0,), scratch=True, equal_latency=False)
    assert [p.key for p in plain] == ["latency=0.5|latency:l1|seed=0", "latency=0.5|scratch|seed=0",
                                      "flops=0.5|uniform:l1|seed=0", "flops=0.5|learned|seed=0",
                                      "flops=0.5|latency:l1|seed=0", "flops=0.5|scratch|seed=0"]
    assert plain[1].method == SCRATCH and plain[1].arch_of.name == "latency:l1"
    equal = points(methods, budgets, (0,), scratch=False, equal_latency=True)
    assert [p.method_name for p in equal if p.budget.metric == "latency"] == ["uniform:l1", "latency:l1"]


@pytest.mark.parametrize("args,message", [
    (["--methods", "unifrom:l1"], "did you mean 'uniform'"),
    (["--methods", "uniform:l7"], "--methods uniform:l7: --criterion 'l7' is not a known criterion"),
    (["--budgets", "flops=2"], "is not a fraction in (0, 1)"),
    (["--budgets", "speed=0.5"], "METRIC one of flops, params, latency"),
    (["--budgets", "flops=0.001"], "--budgets flops=0.001 is out of reach"),
    (["--seeds", "0,x"], "--seeds '0,x': write integers"),
    (["--seeds", "-1"], "must be >= 0"),
    (["--epochs", "0"], "--epochs 0 must be >= 1"),
    (["--methods", "learned", "--epochs", "1"], "leaves none to fine-tune"),
    (["--keep", "some"], "--keep 'some' is not one of none, best, all"),
])
def test_bad_input_is_one_line_exit_2_before_training(tmp_path, cli, monkeypatch, args, message):
    import prunecli.train.finetune as finetune

    monkeypatch.setattr(finetune, "fit", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr("prunecli.pipeline.schedules.fit", finetune.fit)
    base = {"--methods": "uniform:l1", "--budgets": "flops=0.5", "--seeds": "0", "--epochs": "1"}
    flags = dict(zip(args[::2], args[1::2]))
    argv = [x for k, v in {**base, **flags}.items() for x in (k, v)]
    r = cli("compare", *TINY, *argv, "--no-latency", "--out", tmp_path / "cmp")
    assert r.code == 2, r
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cmp" / "points.jsonl").exists()


@pytest.mark.slow
def test_compare_on_the_digits_demo_model(tmp_path, cli):
    """The Done-when command on the demo's dense ResNet-20 (trained once, cached)."""
    from prunecli.pipeline.demo import dense_checkpoint

    path, _ = dense_checkpoint()
    out = tmp_path / "cmp"
    r = cli("compare", path, "--data", "digits", "--budgets", "flops=0.5,0.25", "--methods",
            "uniform:l1,global:l1,sensitivity:l1", "--seeds", "0,1", "--epochs", "2", "--out", out)
    assert r.code == 0, r
    doc = json.loads((out / "compare.json").read_text())
    assert len(doc["points"]) == 12 and {v["budget"] for v in doc["verdicts"]} == {"flops=0.5", "flops=0.25"}
    assert all(p["latency_ratio"] is not None and p["latency_ratio"] < 1 for p in doc["points"])
    assert all(p["test_top1"] > 50 for p in doc["points"])  # fine-tuned pruned digits models


def test_the_eta_counts_each_remaining_point_at_its_methods_pace():
    from prunecli.pipeline.compare import Budget, Point
    from prunecli.pipeline.compare.run import _eta

    b = Budget("flops", 0.5)
    todo = [Point(b, "uniform:l1", 1), Point(b, "learned", 1), Point(b, "global:l1", 1)]
    assert _eta([], todo) is None
    # learned took 5x uniform; global, not timed yet, at the mean of all
    assert _eta([("uniform:l1", 10.0), ("learned", 50.0)], todo) == pytest.approx(10 + 50 + 30)
