"""Where the data stages run: the device, mixed precision and memory format (``--device``, ``--amp``).

Every stage that feeds data through the model (evaluation, BatchNorm recalibration, fine-tuning and
distillation, the sensitivity scan, the learned search) takes a :class:`Placement`. The plan, the
bundle and the ONNX file never depend on it: the FLOPs fit runs on the meta device, the graph and the
export on the CPU, and a model leaves a data stage on the CPU again.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from prunecli.core.errors import UsageError

AMP_MODES = ("off", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Placement:
    """A resolved device (``"cpu"``, ``"cuda:0"``, ``"mps"``) and its AMP mode."""

    device: str = "cpu"
    amp: str = "off"  # off | bf16 | fp16
    requested: str = "cpu"  # what the user typed (auto, cuda, ...)

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"--amp {self.amp!r} must be one of {', '.join(AMP_MODES)}")

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]

    @property
    def channels_last(self) -> bool:
        """NHWC on CUDA (faster convolutions with cuDNN/Tensor Cores); the CPU keeps NCHW."""
        return self.kind == "cuda"

    @property
    def pin_memory(self) -> bool:
        return self.kind == "cuda"

    def to_json(self) -> dict:
        return {"device": self.device, "requested": self.requested, "amp": self.amp, "channels_last": self.channels_last}

    def autocast(self):
        """``torch.autocast`` for the AMP mode (a no-op context with ``off``)."""
        import torch

        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.kind, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def scaler(self):
        """A GradScaler for fp16 (disabled otherwise: bf16 has fp32's range and needs none)."""
        import torch

        return torch.amp.GradScaler(self.kind, enabled=self.amp == "fp16")

    def batch(self, x, y):
        """A batch on the device (non-blocking copies from pinned memory; NHWC images on CUDA)."""
        import torch

        if self.device == "cpu":
            return x, y
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def move_(self, model):
        """``model`` onto the device (NHWC on CUDA); returns it."""
        import torch

        if self.device == "cpu":
            return model
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    @contextlib.contextmanager
    def placed(self, *models):
        """The models on the device for the block; those that came from the CPU go back there (NCHW) after it."""
        moved = [m for m in models if self.device != "cpu" and _device_of(m) == "cpu"]
        for model in moved:
            self.move_(model)
        try:
            yield
        finally:
            for model in moved:
                to_cpu_(model)


def _device_of(model) -> str:
    first = next(iter(model.parameters()), None)
    return "cpu" if first is None else str(first.device)


CPU = Placement()


def to_cpu_(model):
    """``model`` back on the CPU in the default (NCHW) memory format."""
    import torch

    model.to("cpu")
    for p in list(model.parameters()) + list(model.buffers()):
        if p.dim() == 4 and not p.is_contiguous():
            p.data = p.data.contiguous(memory_format=torch.contiguous_format)
    return model


def resolve(device: str = "auto", amp: str = "off", local_rank: int | None = None) -> Placement:
    """``--device``/``--amp`` -> a Placement, or a UsageError naming the flag and the fix (before any work).

    Under torchrun (``local_rank`` set) ``cuda`` and ``auto`` mean ``cuda:LOCAL_RANK``.
    """
    import torch

    text = device.strip().lower()
    if amp not in AMP_MODES:
        raise UsageError(f"--amp {amp!r} is not one of {', '.join(AMP_MODES)}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise UsageError(f"--device {device!r} is not a device; use {DEVICE_HELP}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here (torch {torch.__version__}, "
                             f"torch.cuda.is_available() is False); use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if text == "cuda":
            index = local_rank if local_rank is not None else torch.cuda.current_device()
        else:
            index = int(text.split(":")[1])
            if local_rank is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
                raise UsageError(f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
                                 "pass --device cuda (or auto)")
        if index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0-cuda:{count - 1})")
        text = f"cuda:{index}"
    if text == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: Apple's MPS is not available here; use --device cpu or auto")
    if amp == "fp16" and text == "cpu":
        raise UsageError("--amp fp16 needs a GPU (float16 autocast on the CPU is slow and needs a GradScaler "
                         "there too); on the CPU use --amp bf16 or off")
    return Placement(device=text, amp=amp, requested=device)
