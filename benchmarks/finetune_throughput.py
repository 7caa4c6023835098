"""Images/s of prunecli's fine-tuning loop against a minimal hand-written PyTorch loop (goal: within 5%).

    python benchmarks/finetune_throughput.py                      # CPU: 1 process, then torchrun 2 processes (gloo)
    python benchmarks/finetune_throughput.py --device cuda --amp bf16   # on a GPU (also --amp off, fp16)
    python benchmarks/finetune_throughput.py --table-only

Same model (prunecli's CIFAR ResNet-20, 3x32x32, 10 classes), same in-memory data (--images synthetic images),
same batch per process, same optimiser (SGD, Nesterov momentum 0.9, weight decay 5e-4, one LambdaLR step per
batch). The hand-written loop is the few lines a user would write: forward, cross-entropy, zero_grad,
backward, step, scheduler step (under torchrun: DistributedDataParallel and a DistributedSampler). prunecli's
is `prunecli.train.finetune.fit`, whose report counts training time only (validation excluded), as the hand loop
does. Each measurement trains --epochs epochs; the first epoch is a warm-up in both (its time is dropped).
One process uses all --threads; torchrun runs 2 processes with threads/2 each. Repeats alternate the two
loops; the table shows the median. Must run alone on the machine. Raw runs are appended to
benchmarks/results/finetune_throughput_runs.jsonl (a recorded configuration and repeat is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "finetune_throughput_runs.jsonl"
TABLE = RESULTS / "finetune_throughput.md"
SHAPE = (3, 32, 32)


def _data(images: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, *SHAPE, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _model():
    import torch

    from prunecli.models.zoo import cifar_resnet

    torch.manual_seed(0)
    return cifar_resnet(depth=20, num_classes=10)


def _world():
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if os.environ.get("BENCH_DEVICE", "cpu").startswith("cuda") else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def hand_loop(args) -> dict:
    """The minimal loop a user would write (DDP + DistributedSampler under torchrun)."""
    import torch

    rank, world = _world()
    device = args.device if args.device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = _model().to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device == "cpu" else [device])
    dataset = _data(args.images)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0) \
        if world > 1 else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=sampler is None, sampler=sampler,
                                         pin_memory=device != "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=args.amp == "fp16")
    times, samples = [], []
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(y)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        samples.append(seen * world)
    return {"images_per_s": sum(samples[1:]) / sum(times[1:])}


def prunecli_loop(args) -> dict:
    """prunecli.train.finetune.fit on the same model, data and batch (validation on 1 batch, not timed)."""
    import torch

    from prunecli.core.device import resolve
    from prunecli.core.distributed import init, local_rank
    from prunecli.train.data import DataConfig, Loaders, make_loader, shard
    from prunecli.train.finetune import FinetuneConfig, fit

    placement = resolve(args.device, args.amp, local_rank=local_rank())
    world = init(placement.kind)
    dataset = _data(args.images)
    config = DataConfig("synthetic", batch_size=args.batch, workers=0, pin_memory=placement.pin_memory)
    val = torch.utils.data.Subset(dataset, list(range(args.batch * world.world_size)))
    loaders = Loaders(make_loader(dataset, config, train=True, seed=0, workers=0),
                      make_loader(val, config, train=False, seed=0, workers=0), None, 10, "synthetic")
    loaders = shard(loaders, world.rank, world.world_size, 0)
    model = _model()
    result = fit(model, loaders.train, loaders.val, FinetuneConfig(epochs=args.epochs, warmup_fraction=0.0), None,
                 placement=placement, world=world)
    # the same figure as the hand loop's: images of the epochs after the first over their training time
    training = result.training
    per_epoch = training["train_images"] / args.epochs
    later = training["epoch_train_s"][1:]
    return {"images_per_s": per_epoch * len(later) / sum(later), "report_images_per_s": training["images_per_s"],
            **({"ranks_identical": training.get("ranks_identical")} if world.distributed else {})}


def worker(args) -> None:
    """One measurement in this process (or in each torchrun process); rank 0 prints the JSON line."""
    import torch

    torch.set_num_threads(args.threads_per_process)
    result = hand_loop(args) if args.loop == "hand" else prunecli_loop(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def measure(args, loop: str, processes: int) -> dict:
    threads = max(1, args.threads // processes)
    common = ["--worker", "--loop", loop, "--threads-per-process", str(threads), "--images", str(args.images),
              "--batch", str(args.batch), "--epochs", str(args.epochs), "--device", args.device, "--amp", args.amp]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_DEVICE": args.device,
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if processes == 1:
        cmd = [sys.executable, str(Path(__file__).resolve()), *common]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(processes), str(Path(__file__).resolve()), *common]
    failures = []
    for _ in range(3):  # a gloo process group on this machine has aborted at start-up once in ~20 runs: retry
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode == 0 and lines:
            return {**json.loads(lines[-1][len("RESULT "):]), "failed_attempts": failures}
        failures.append(next((line for line in out.stderr.splitlines() if "terminate" in line or "Error" in line),
                             f"exit {out.returncode}"))
    raise SystemExit(f"{' '.join(cmd)} failed 3 times:\n{out.stderr[-3000:]}")


def _machine() -> str:
    from prunecli.runtime.timing import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}"


def _load_runs() -> list[dict]:
    if not RUNS.exists():
        return []
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def write_table() -> str:
    runs = _load_runs()
    groups: dict[tuple, dict[str, list[float]]] = {}
    info = {}
    for r in runs:
        key = (r["machine"], r["device"], r["amp"], r["processes"], r["threads"], r["batch"], r["images"], r["epochs"])
        groups.setdefault(key, {}).setdefault(r["loop"], []).append(r["images_per_s"])
        info[key] = r
    lines = ["# Fine-tuning throughput: prunecli's loop vs a hand-written PyTorch loop", "",
             "`python benchmarks/finetune_throughput.py` (see its docstring for the protocol). Model: prunecli's CIFAR "
             "ResNet-20 (3x32x32), synthetic in-memory data, SGD; images/s of training (validation excluded; the "
             "first epoch dropped as warm-up in both loops), median of the repeats. Goal: prunecli within 5% of the hand loop.", "",
             "| machine | device | AMP | processes x threads | batch/process | hand loop img/s | prunecli img/s | "
             "prunecli / hand | repeats |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for key, loops in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
        machine, device, amp, processes, threads, batch, images, epochs = key
        hand, ours = loops.get("hand", []), loops.get("prunecli", [])
        if not hand or not ours:
            continue
        h, p = statistics.median(hand), statistics.median(ours)
        lines.append(f"| {machine} | {device} | {amp} | {processes} x {threads // processes} | {batch} | {h:.0f} | "
                     f"{p:.0f} | {p / h:.3f} | {min(len(hand), len(ours))} |")
    if not any(k[1].startswith("cuda") for k in groups):
        lines += ["", "No GPU was available to this benchmark's sessions: there is no GPU (or AMP on GPU) table yet. "
                  "Run `python benchmarks/finetune_throughput.py --device cuda --amp bf16` (and `--amp off`) on one."]
    text = "\n".join(lines) + "\n"
    TABLE.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=("hand", "prunecli"), help=argparse.SUPPRESS)
    parser.add_argument("--threads-per-process", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--processes", default="1,2", help="process counts to measure (2+: torchrun)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.table_only:
        print(write_table())
        return
    machine = _machine() if args.device == "cpu" else f"{args.device} ({_gpu_name()})"
    done = {(r["machine"], r["device"], r["amp"], r["processes"], r["threads"], r["batch"], r["images"], r["epochs"],
             r["loop"], r["repeat"]) for r in _load_runs()}
    RESULTS.mkdir(exist_ok=True)
    for processes in [int(p) for p in args.processes.split(",")]:
        for repeat in range(args.repeats):
            for loop in ("hand", "prunecli") if repeat % 2 == 0 else ("prunecli", "hand"):
                key = (machine, args.device, args.amp, processes, args.threads, args.batch, args.images, args.epochs,
                       loop, repeat)
                if key in done:
                    continue
                result = measure(args, loop, processes)
                row = dict(zip(("machine", "device", "amp", "processes", "threads", "batch", "images", "epochs", "loop",
                                "repeat"), key), **result)
                with RUNS.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{processes} process(es) {loop:8s} repeat {repeat}: {result['images_per_s']:.0f} img/s", flush=True)
    print(write_table())


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
