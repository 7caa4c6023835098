"""Evaluation, BatchNorm recalibration and fine-tuning (optionally distilling from the dense model).

Fine-tuning selects the best epoch on the validation split (never the test split), checkpoints every
epoch (``last.pt``: weights, optimiser, schedule, history; ``best.safetensors``), stops with a clear
error on a non-finite loss keeping the last good checkpoint, and turns Ctrl-C into a clean stop that
keeps the best weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import require_finite
from .data import DataFault
from .errors import RuntimeFailure

LAST = "last.pt"
BEST = "best.safetensors"


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 0
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05  # of all steps, linear warmup before the cosine decay
    distill: bool = False
    distill_weight: float = 0.7  # weight of the KL term; the task loss gets 1 - weight
    temperature: float = 4.0
    seed: int = 0
    bn_batches: int = 20  # batches for BatchNorm recalibration after pruning
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"--epochs {self.epochs} must be >= 0")
        require_finite("--lr", self.lr, 0)
        require_finite("--weight-decay", self.weight_decay, 0, strict=False)
        require_finite("momentum", self.momentum, 0, strict=False)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"--optimizer {self.optimizer!r} must be sgd or adamw")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"--distill-weight {self.distill_weight} must be in [0, 1]")
        require_finite("--temperature", self.temperature, 0)
        if self.bn_batches < 0:
            raise ValueError(f"bn_batches {self.bn_batches} must be >= 0")


class TrainingDiverged(RuntimeFailure):
    """A non-finite loss (exit 4); the last good checkpoint is kept."""


@dataclass
class FitResult:
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val: dict | None = None
    interrupted: bool = False


def evaluate(model, loader, max_batches: int | None = None) -> dict:
    """top-1, top-5 (top-k with k = min(5, classes)) accuracy in percent and mean cross-entropy loss."""
    import torch

    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            logits = model(x)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y.unsqueeze(1)).any(dim=1).sum())
            total += int(y.numel())
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "samples": 0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total, "samples": total}


def recalibrate_bn(model, loader, batches: int) -> None:
    """Re-estimate BatchNorm running statistics after pruning (cumulative average over ``batches``)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()


def distill_loss(student_logits, teacher_logits, labels, weight: float, temperature: float):
    """(1 - w) * CE(student, y) + w * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al.)."""
    import torch.nn.functional as F

    task = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                  reduction="batchmean") * temperature**2
    return (1 - weight) * task + weight * kl


def _optimizer(model, config: FinetuneConfig):
    import torch

    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=True)


def _schedule(optimizer, total_steps: int, warmup_fraction: float):
    import torch

    warmup = max(0, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_best(model, directory: Path, epoch: int, val: dict) -> None:
    from safetensors.torch import save_model

    from .outputs import apply_umask

    tmp = directory / (BEST + ".tmp")
    save_model(model, str(tmp))
    apply_umask(tmp, directory=False)  # safetensors writes 0600
    os.replace(tmp, directory / BEST)
    (directory / "best.json").write_text(json.dumps({"epoch": epoch, "val": val}))


def load_best_(model, directory: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(directory / BEST))


def fit(model, train_loader, val_loader, config: FinetuneConfig, checkpoints: Path | None, *, teacher=None,
        resume: dict | None = None, progress=None, label: str = "fine-tune", after_epoch=None) -> FitResult:
    """Fine-tune ``model`` in place for ``config.epochs``; afterwards it holds the best-validation weights.

    ``after_epoch(model)`` runs before the first evaluation and after every epoch's training, before
    validation (Soft Filter Pruning zeroes its filters there, so validation sees the pruned model).
    """
    import torch

    torch.manual_seed(config.seed)
    result = FitResult()
    if config.epochs == 0:
        return result
    optimizer = _optimizer(model, config)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = _schedule(optimizer, config.epochs * steps_per_epoch, config.warmup_fraction)
    start_epoch = 0
    best_top1 = -1.0
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch = int(resume["epoch"])
        result.history = list(resume.get("history", []))
        best_top1 = float(resume.get("best_top1", -1.0))
        result.best_epoch = int(resume.get("best_epoch", 0))
        torch.set_rng_state(resume["rng"])
    else:
        if after_epoch is not None:
            after_epoch(model)
        val = evaluate(model, val_loader)
        best_top1 = val["top1"]
        result.best_val = val
        if checkpoints is not None:
            _save_best(model, checkpoints, 0, val)
    best_state = copy.deepcopy(model.state_dict())
    if teacher is not None:
        teacher.eval()
    task_id = progress.add_task(label, total=config.epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                                info="") if progress is not None else None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            running, seen = 0.0, 0
            for step, (x, y) in enumerate(train_loader):
                logits = model(x)
                if teacher is not None and config.distill:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss = distill_loss(logits, teacher_logits, y, config.distill_weight, config.temperature)
                else:
                    loss = torch.nn.functional.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    where = f"{checkpoints / LAST} (epoch {epoch})" if checkpoints is not None and (checkpoints / LAST).exists() else "none yet"
                    raise TrainingDiverged(
                        f"the training loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; stopped. "
                        f"Last good checkpoint: {where}. Lower --lr (now {config.lr:g}) or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += float(loss) * len(y)
                seen += len(y)
                if progress is not None:
                    progress.update(task_id, advance=1, info=f"epoch {epoch + 1}/{config.epochs} loss {running / seen:.3f}")
            if after_epoch is not None:
                after_epoch(model)
            val = evaluate(model, val_loader)
            record = {"epoch": epoch + 1, "train_loss": running / max(1, seen), "val": val,
                      "lr": scheduler.get_last_lr()[0]}
            result.history.append(record)
            if val["top1"] > best_top1:
                best_top1, result.best_epoch, result.best_val = val["top1"], epoch + 1, val
                best_state = copy.deepcopy(model.state_dict())
                if checkpoints is not None:
                    _save_best(model, checkpoints, epoch + 1, val)
            if progress is not None:
                progress.update(task_id, info=f"epoch {epoch + 1}/{config.epochs} val top-1 {val['top1']:.2f}%")
            if checkpoints is not None:
                _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": result.history,
                              "best_top1": best_top1, "best_epoch": result.best_epoch, "rng": torch.get_rng_state(),
                              "config": json.dumps(asdict(config))}, checkpoints / LAST)
    except KeyboardInterrupt:
        result.interrupted = True
    except DataFault as exc:
        kept = f"{checkpoints / LAST} (epoch {epoch})" if checkpoints is not None and (checkpoints / LAST).exists() else None
        raise DataFault(f"{exc}. Stopped in epoch {epoch + 1}; "
                        + (f"last good checkpoint {kept}: rerun with --resume after the fix" if kept
                           else "no checkpoint yet")) from exc
    model.load_state_dict(best_state)
    model.eval()
    return result


def read_resume_state(checkpoints: Path) -> dict:
    """The last.pt state of an earlier run (weights_only=True: tensors, numbers and strings only)."""
    import torch

    path = checkpoints / LAST
    if not path.is_file():
        from .errors import UsageError

        raise UsageError(f"--resume: {path} not found; run without --resume first")
    return torch.load(path, map_location="cpu", weights_only=True)
