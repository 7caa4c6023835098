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

from prunecli.core.checks import require_finite
from prunecli.core.device import CPU, Placement, to_cpu_
from prunecli.core.distributed import (
    SINGLE,
    World,
    all_gather,
    all_sum,
    broadcast_buffers_,
    broadcast_state_,
    state_sha256,
)
from prunecli.core.errors import RuntimeFailure, VerificationFailed
from prunecli.train.data import DataFault

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
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, GPUs only)
    from_scratch: bool = False  # the pruned architecture re-initialised (seeded) before training: the control of
    # "Rethinking the value of network pruning" (Liu et al. 2019); `prune --from-scratch`, `compare --scratch`

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
    training: dict = field(default_factory=dict)  # device, AMP, world size, throughput, ranks' weights


def evaluate(model, loader, max_batches: int | None = None, placement: Placement = CPU, world: World = SINGLE) -> dict:
    """top-1, top-5 (top-k with k = min(5, classes)) accuracy in percent and mean cross-entropy loss, in fp32.

    Under torchrun each rank evaluates its share of ``loader`` and the sums are reduced: every sample once.
    """
    import torch

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=placement.device)  # correct1, correct5, total, loss
    with torch.no_grad(), placement.placed(model):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = placement.batch(x, y)
            logits = model(x).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            sums += torch.stack([(top[:, 0] == y).sum().double(), (top == y.unsqueeze(1)).any(dim=1).sum().double(),
                                 torch.tensor(float(y.numel()), dtype=torch.float64, device=sums.device),
                                 torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()])
    correct1, correct5, total, loss_sum = all_sum(world, sums.cpu().tolist())
    total = int(total)
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "samples": 0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total, "samples": total}


def reinitialise_(model, seed: int) -> None:
    """Every layer's parameters drawn afresh (``reset_parameters``, as at construction), seeded: the pruned
    architecture without what it inherited from the dense model."""
    import torch

    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()


def recalibrate_bn(model, loader, batches: int, placement: Placement = CPU) -> None:
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
    with torch.no_grad(), placement.placed(model):
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            model(placement.batch(x, y)[0])
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


def _save_best(model, directory: Path, epoch: int, val: dict) -> None:
    from safetensors.torch import save_model

    from prunecli.core import interrupts
    from prunecli.core.outputs import apply_umask

    tmp = directory / (BEST + ".tmp")
    with interrupts.deferred():
        save_model(model, str(tmp))
        apply_umask(tmp, directory=False)  # safetensors writes 0600
        os.replace(tmp, directory / BEST)
        (directory / "best.json").write_text(json.dumps({"epoch": epoch, "val": val}))


def load_best_(model, directory: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(directory / BEST))


def _training_copy(model, config: FinetuneConfig, placement: Placement, world: World):
    """What the optimiser steps: ``model`` itself, or under torchrun a DistributedDataParallel around it (around a
    SyncBatchNorm copy with ``--sync-bn``; the caller's model then takes its weights at the end)."""
    import torch

    if not world.distributed:
        return model, model
    work = model
    if config.sync_bn:
        work = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    device_ids = [placement.device] if placement.kind == "cuda" else None
    return work, torch.nn.parallel.DistributedDataParallel(work, device_ids=device_ids)


def _rank_check(model, world: World) -> dict:
    """Every rank takes rank 0's BatchNorm statistics (each updates its own), then the ranks' weights are hashed:
    DistributedDataParallel keeps parameters identical, so a difference is a fault (exit 3), never a bundle."""
    broadcast_buffers_(world, model)
    hashes = all_gather(world, state_sha256(model))
    if len(set(hashes)) != 1:
        raise VerificationFailed(f"the {world.world_size} ranks ended fine-tuning with different weights "
                                 f"(sha256 {', '.join(h[:12] for h in hashes)}); the bundle was not written. "
                                 "Rerun; if it persists, report it with --debug output")
    return {"ranks_identical": True, "weights_sha256": hashes[0]}


def _set_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def fit(model, train_loader, val_loader, config: FinetuneConfig, checkpoints: Path | None, *, teacher=None,
        resume: dict | None = None, progress=None, label: str = "fine-tune", after_epoch=None,
        placement: Placement = CPU, world: World = SINGLE) -> FitResult:
    """Fine-tune ``model`` in place for ``config.epochs``; afterwards it holds the best-validation weights, on the CPU.

    ``after_epoch(model)`` runs before the first evaluation and after every epoch's training, before
    validation (Soft Filter Pruning zeroes its filters there, so validation sees the pruned model).
    ``placement``: device and AMP. Under torchrun (``world``) every rank trains its share of each global batch
    through DistributedDataParallel; only rank 0 writes checkpoints; validation counts every sample once.
    """
    import time

    import torch

    torch.manual_seed(config.seed)
    result = FitResult()
    if config.epochs == 0:
        return result
    placement.move_(model)
    if teacher is not None:
        placement.move_(teacher)
        teacher.eval()
    writes = checkpoints is not None and world.main
    steps_per_epoch = max(1, len(train_loader))
    start_epoch = 0
    best_top1 = -1.0
    if resume:
        model.load_state_dict(resume["model"])
        start_epoch = int(resume["epoch"])
        result.history = list(resume.get("history", []))
        best_top1 = float(resume.get("best_top1", -1.0))
        result.best_epoch = int(resume.get("best_epoch", 0))
        torch.set_rng_state(resume["rng"])
    broadcast_state_(world, model)  # under torchrun every rank starts from rank 0's weights
    if not resume:
        if after_epoch is not None:
            after_epoch(model)
        val = evaluate(model, val_loader, placement=placement, world=world)
        best_top1 = val["top1"]
        result.best_val = val
        if writes:
            _save_best(model, checkpoints, 0, val)
    work, net = _training_copy(model, config, placement, world)
    optimizer = _optimizer(work, config)  # ``work``: the model, or its SyncBatchNorm copy
    scheduler = _schedule(optimizer, config.epochs * steps_per_epoch, config.warmup_fraction)
    scaler = placement.scaler()
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    best_state = copy.deepcopy(work.state_dict())
    task_id = progress.add_task(label, total=config.epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                                info="") if progress is not None else None
    check_every = 1 if placement.device == "cpu" else 25  # reading the loss waits for the GPU: not every step
    train_s, train_samples, epoch_s = 0.0, 0, []
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            net.train()
            _set_epoch(train_loader, epoch)
            running = torch.zeros((), dtype=torch.float64, device=placement.device)
            seen = 0
            t0 = time.perf_counter()
            for step, (x, y) in enumerate(train_loader):
                x, y = placement.batch(x, y)
                with placement.autocast():
                    logits = net(x)
                    if teacher is not None and config.distill:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                        loss = distill_loss(logits.float(), teacher_logits.float(), y, config.distill_weight,
                                            config.temperature)
                    else:
                        loss = torch.nn.functional.cross_entropy(logits.float(), y)
                running += loss.detach().double() * len(y)
                seen += len(y)
                if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                    if not torch.isfinite(running):
                        where = (f"{checkpoints / LAST} (epoch {epoch})" if checkpoints is not None
                                 and (checkpoints / LAST).exists() else "none yet")
                        raise TrainingDiverged(
                            f"the training loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; stopped. "
                            f"Last good checkpoint: {where}. Lower --lr (now {config.lr:g}) or check the data"
                        )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if progress is not None and (step + 1) % check_every == 0:
                    progress.update(task_id, advance=check_every,
                                    info=f"epoch {epoch + 1}/{config.epochs} loss {float(running) / seen:.3f}")
            if placement.kind == "cuda":
                torch.cuda.synchronize(placement.device)
            epoch_s.append(time.perf_counter() - t0)
            train_s += epoch_s[-1]
            train_samples += seen
            if progress is not None:
                progress.update(task_id, completed=(epoch + 1) * steps_per_epoch)
            if after_epoch is not None:
                after_epoch(work)
            broadcast_buffers_(world, work)  # validate rank 0's BatchNorm statistics on every share
            val = evaluate(work, val_loader, placement=placement, world=world)
            train_loss = all_sum(world, [float(running), float(seen)])
            record = {"epoch": epoch + 1, "train_loss": train_loss[0] / max(1.0, train_loss[1]), "val": val,
                      "lr": scheduler.get_last_lr()[0]}
            result.history.append(record)
            if val["top1"] > best_top1:
                best_top1, result.best_epoch, result.best_val = val["top1"], epoch + 1, val
                best_state = copy.deepcopy(work.state_dict())
                if writes:
                    _save_best(work, checkpoints, epoch + 1, val)
            if progress is not None:
                progress.update(task_id, info=f"epoch {epoch + 1}/{config.epochs} val top-1 {val['top1']:.2f}%")
            if writes:
                _save_atomic({"model": work.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                              "epoch": epoch + 1, "history": result.history,
                              "best_top1": best_top1, "best_epoch": result.best_epoch, "rng": torch.get_rng_state(),
                              "config": json.dumps(asdict(config))}, checkpoints / LAST)
    except KeyboardInterrupt:
        if world.distributed:  # every rank stops (the terminal or torchrun signals them all): no bundle; resume later
            from prunecli.core import interrupts

            kept = checkpoints / LAST if checkpoints is not None and (checkpoints / LAST).exists() else None
            why = "stopped by torchrun (SIGTERM: another process failed or was stopped)" if interrupts.by_sigterm() \
                else "interrupted"
            interrupts.report(why + "; " + (f"{kept} (epoch {torch.load(kept, map_location='cpu', weights_only=True)['epoch']}) "
                                                 "is kept: rerun the same torchrun command with --resume"
                                                 if kept else "no checkpoint had been written yet"))
            raise
        result.interrupted = True
    except DataFault as exc:
        kept = f"{checkpoints / LAST} (epoch {epoch})" if checkpoints is not None and (checkpoints / LAST).exists() else None
        raise DataFault(f"{exc}. Stopped in epoch {epoch + 1}; "
                        + (f"last good checkpoint {kept}: rerun with --resume after the fix" if kept
                           else "no checkpoint yet")) from exc
    samples = int(all_sum(world, [float(train_samples)])[0])
    result.training = {**placement.to_json(), **world.to_json(), "batch_per_process": getattr(train_loader, "batch_size", None),
                       "train_images": samples, "train_s": train_s, "epoch_train_s": epoch_s,
                       "images_per_s": samples / train_s if train_s > 0 else None}
    if world.distributed and not result.interrupted:
        result.training.update(_rank_check(work, world))
    model.load_state_dict(best_state)
    broadcast_buffers_(world, model)
    to_cpu_(model.eval())
    if teacher is not None:
        to_cpu_(teacher)
    return result


def _save_atomic(obj, path: Path) -> None:
    import torch

    from prunecli.core import interrupts

    tmp = path.with_name(path.name + ".tmp")
    with interrupts.deferred():  # a Ctrl-C waits for the checkpoint: never a half-written file beside it
        torch.save(obj, tmp)
        os.replace(tmp, path)


def read_resume_state(checkpoints: Path) -> dict:
    """The last.pt state of an earlier run (weights_only=True: tensors, numbers and strings only)."""
    import torch

    path = checkpoints / LAST
    if not path.is_file():
        from prunecli.core.errors import UsageError

        raise UsageError(f"--resume: {path} not found; run without --resume first")
    return torch.load(path, map_location="cpu", weights_only=True)
