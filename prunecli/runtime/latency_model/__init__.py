"""The latency model: how a model's latency on the deployment runtime changes with each group's kept channels.

Measured, not modelled from FLOPs:

- **Layer tables.** Every Conv2d and Linear layer is rebuilt as a one-node ONNX model at its real input
  shape and timed with onnxruntime at the channel counts the fit may choose: along its output channels (at
  its dense input channels) and along its input channels (at its dense output channels); a depthwise conv
  along its one channel count. A layer then costs ``dense * u(cin) * v(cout)``, with ``u`` and ``v`` the two
  measured curves (linear between measured points).
- **The staircase.** Runtimes block channels (onnxruntime's x86 kernels work in blocks of 4, 8 or 16 channels
  depending on the CPU), so a count that is not a multiple of the block costs about as much as the next
  multiple, or more. A probe sweeps channel counts one by one on a small conv and a depthwise conv, finds the
  block (:attr:`Staircase.block`) and what an off-block count costs extra; the tables are measured at
  multiples of the block, and off-block counts pay the measured penalty.
- **Calibration.** Layers timed alone are not the whole model (fusions, layout changes, element-wise ops), so
  the prediction is ``overhead + k * sum(layers)``, with the per-call overhead measured on a trivial model and
  ``k`` set so that the dense prediction equals the dense model's measured latency. (A second whole-model point
  at half the channels was tried: on the 64-channel test nets it moved the error from -7..+17% to -20%.)

Measurements are cached on disk (``$XDG_CACHE_HOME/prunecli/latency/``) in one file per runtime: provider,
threads, CPU model and onnxruntime version; a layer's entry is keyed by its signature (op, shapes, kernel,
stride, groups, batch). A second prune of a similar model measures only the layers it has not seen.
"""

from __future__ import annotations

from prunecli.runtime.latency_model._onnx import _relu_bytes, layer_bytes
from prunecli.runtime.latency_model.layers import Layer, Side, layers_of
from prunecli.runtime.latency_model.predict import (
           LatencyModel,
           build_latency_model,
           describe,
)
from prunecli.runtime.latency_model.staircase import (
           PROBE_RANGE,
           Staircase,
           find_block,
           probe_staircase,
)
from prunecli.runtime.latency_model.table import CACHE_VERSION, Table

__all__ = ["CACHE_VERSION", "PROBE_RANGE", "LatencyModel", "Layer", "Side", "Staircase", "Table", "_relu_bytes",
           "build_latency_model", "describe", "find_block", "layer_bytes", "layers_of", "probe_staircase"]
