"""The `inspect` stage: one JSON-ready document describing a loaded model's prunability."""

from __future__ import annotations

from prunecli.artifacts.load import LoadedModel
from prunecli.graph.cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL, count_macs
from prunecli.graph.groups import analyse
from prunecli.plan.constraints import constraints_for

SCHEMA_VERSION = 1


def inspect_model(loaded: LoadedModel, *, ignore=(), round_to=None, min_channels: int = 1,
                  prune_heads: bool = False) -> dict:
    from prunecli.graph import attention

    patterns, step = constraints_for(loaded, tuple(ignore), round_to)
    analysis = analyse(loaded.model, loaded.example_input, ignore=patterns, round_to=step, min_channels=min_channels,
                       prune_heads=prune_heads)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.display_name,
        "arch": loaded.arch,
        "input_shape": list(loaded.input_shape),
        "preset": loaded.preset.name if loaded.preset else None,
        "params": analysis.params,
        "flops": analysis.flops,
        "macs": count_macs(loaded.model, loaded.example_input),
        "units": {"params": PARAMS_LABEL, "flops": FLOPS_LABEL, "macs": MACS_LABEL},
        "groups": [g.to_json() for g in analysis.groups],
        "not_prunable": [{"layer": n.layer, "reason": n.reason} for n in analysis.not_prunable],
        "min_flops_ratio": analysis.min_flops_ratio,
        "min_params_ratio": analysis.min_params_ratio,
        "constraints": {"round_to": step, "min_channels": min_channels, "ignore": list(patterns),
                        "prune_heads": prune_heads},
        "attention": [h.to_json() for h in attention.find(loaded.model).values()],
    }


def latency_document(loaded: LoadedModel, analysis, settings) -> dict:
    """``inspect --latency``: the latency model of ``loaded`` on the runtime ``settings`` describe (per-group latency
    share, the runtime's channel blocks), built from the dense model exported and timed once."""
    import tempfile
    from pathlib import Path

    from prunecli.runtime.export import export_onnx
    from prunecli.runtime.latency_model import build_latency_model, describe
    from prunecli.runtime.timing import runtime_for, settled_ms

    runtime = settings.runtime()
    with tempfile.TemporaryDirectory(prefix="prunecli-inspect-") as tmp:
        path = Path(tmp) / "dense.onnx"
        export_onnx(loaded.model, loaded.example_input, path, 18)
        measuring = runtime_for(runtime)
        dense = measuring.open("dense", path, runtime, tuple(loaded.input_shape))
        try:
            dense_ms = settled_ms(measuring, dense, settings.stat)
        finally:
            measuring.drop(dense)
    model = build_latency_model(loaded.model, loaded.example_input, analysis.groups, runtime, dense_ms, dense.batch)
    return describe(model)
