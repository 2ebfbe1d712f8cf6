"""`personseg train CONFIG.yaml --out RUNDIR [--set key=value ...] [--resume] [--qat]`

One process, or many under torchrun (`torchrun --nproc_per_node=2 -m personseg train ...`): the
torchrun environment variables switch on DistributedDataParallel (gloo on CPU, nccl on GPU). Rank 0
alone writes: RUNDIR/config.yaml, log.jsonl (training losses), metrics.jsonl (one line per
evaluation), tb/ (TensorBoard), last.pt (everything needed to resume) and best.pt (best pooled
validation IoU). `--resume` continues from last.pt exactly: same data, same loss curve.

The seed schedule (`schedule.scheduler: plateau`): when pooled validation IoU has not improved for
`schedule.patience` evaluations, lr drops to `schedule.lr_after_plateau` and the boundary loss
enters, its weight growing by `loss.boundary_step` at the end of every epoch.

`train` reads top to bottom: `setup_distributed`, `build_loaders`, `build_model`, then `fit`, the
loop, which calls `train_step` and `evaluate_and_save`. `TrainState` is what a resumed run needs
besides the weights; `Schedule` turns it into the learning rate and updates it after every step.

`--qat` (`qat: true`) fine-tunes with fake int8 quantization (personseg.qat), usually from a float
checkpoint given as `model.init`; its checkpoints are float and export with `personseg export --int8`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from personseg.checkpoint import (IMAGENET_MEAN, IMAGENET_STD, CheckpointError, load_checkpoint, read_checkpoint,
                                  save_checkpoint)
from personseg.config import TrainConfig, load_config, to_dict
from personseg.data import build_train_dataset, build_train_sampler, build_val_datasets
from personseg.losses import HeadsLoss, SegLoss
from personseg.metrics import BinaryMetrics
from personseg.models import create_model, is_recurrent
from personseg.models.recurrent import ClipRunner
from personseg.qat import QATModel


EPILOG = """\
examples:
  personseg train configs/smoke.yaml -o runs/smoke                      (a minute on a CPU: the plumbing)
  personseg train configs/fast.yaml -o runs/fast --set optim.lr=3e-4 --set threads=1
  personseg train configs/fast.yaml -o runs/fast --resume                (after a kill or Ctrl-C)
  torchrun --nproc_per_node=2 -m personseg train configs/accurate.yaml -o runs/accurate

exit status: 0 done; 2 a bad recipe, --set or data folder (one line naming it); 130 interrupted
(last.pt holds the last checkpoint: continue with --resume).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("config", help="YAML recipe: overrides of personseg.config.TrainConfig (see configs/)")
    parser.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="RUNDIR",
                        help="run folder for checkpoints and logs (--out is the older spelling)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value last, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from RUNDIR/last.pt")
    parser.add_argument("--qat", action="store_true",
                        help="quantization-aware training, same as --set qat=true (see personseg.qat)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides + (["qat=true"] if args.qat else []))
    except (KeyError, TypeError, ValueError, OSError) as e:
        print(f"personseg train: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    from personseg.tempfiles import sigterm_exits

    try:
        with sigterm_exits():  # SIGTERM: the checkpoint being written is removed, as on Ctrl-C
            train(cfg, args.out, resume=args.resume)
    except (FileNotFoundError, CheckpointError, ValueError) as e:  # missing data, model.init, encoder file...
        print(f"personseg train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"personseg train: interrupted; {Path(args.out) / 'last.pt'} holds the last checkpoint, "
              "continue with --resume", file=sys.stderr)
        return 130
    return 0


@dataclass
class Runtime:
    """Where this process computes: torchrun's RANK, LOCAL_RANK and WORLD_SIZE (0, 0 and 1 without
    torchrun), its device, the autocast dtype (None: off) and the memory format of inputs and weights."""
    rank: int
    local_rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format

    @property
    def master(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


@dataclass
class Loaders:
    train: DataLoader  # this rank's share of the mix (a MixSampler, resumable mid-epoch)
    val: dict[str, DataLoader]  # a disjoint shard of each validation source
    steps_per_epoch: int  # optimizer steps


@dataclass
class TrainState:
    """What a resumed run needs besides weights, optimizer, scaler and RNG. last.pt holds it as the
    dict of these fields (`extra["state"]`), the keys it always had."""
    step: int = 0  # optimizer steps done
    best_iou: float = -1.0  # the plateau detector's best pooled validation IoU
    bad_evals: int = 0  # evaluations since that last improved
    plateaued: bool = False
    lr_scale: float = 1.0  # reduce_on_plateau's factor so far
    boundary_weight: float = 0.0
    best_saved_iou: float = -1.0  # the pooled validation IoU of best.pt

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        """From a checkpoint's dict; a key it lacks keeps its default, a key this code lacks is dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


class Schedule:
    """The learning rate, the plateau detector and the boundary-loss ramp of `cfg.schedule` and
    `cfg.loss`. Their state is in a TrainState, so it is saved and resumed with it."""

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps

    def lr(self, state: TrainState) -> float:
        """The learning rate of the next optimizer step."""
        cfg, s, step = self.cfg, self.cfg.schedule, state.step
        if s.scheduler == "cosine":
            lr = s.min_lr + (cfg.optim.lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * step / self.total_steps))
        elif s.scheduler == "plateau":
            lr = s.lr_after_plateau if state.plateaued else cfg.optim.lr
        else:  # reduce_on_plateau
            lr = max(cfg.optim.lr * state.lr_scale, s.min_lr)
        if step < cfg.optim.warmup_steps:
            lr *= (step + 1) / cfg.optim.warmup_steps
        return lr

    def update(self, state: TrainState, end_of_epoch: bool, iou: float | None = None) -> bool:
        """After every optimizer step: the pooled IoU of a scheduled evaluation goes to the plateau
        detector; then, at the end of an epoch once plateaued, the boundary weight grows by
        `loss.boundary_step`. Returns True at the first plateau."""
        first = iou is not None and self._plateau(state, iou)
        if end_of_epoch and state.plateaued:
            loss = self.cfg.loss
            state.boundary_weight = min(state.boundary_weight + loss.boundary_step, loss.boundary_max)
        return first

    def _plateau(self, state: TrainState, iou: float) -> bool:
        """After `patience` evaluations without improvement the run has plateaued: lr drops and the
        boundary loss enters (reduce_on_plateau scales lr by `factor`, again at every plateau).
        Returns True at the first plateau."""
        s = self.cfg.schedule
        if iou > state.best_iou + s.min_delta:
            state.best_iou, state.bad_evals = iou, 0
            return False
        state.bad_evals += 1
        if state.bad_evals < s.patience:
            return False
        first = not state.plateaued
        state.plateaued = True
        if s.scheduler == "reduce_on_plateau":
            state.lr_scale *= s.factor
            state.bad_evals = 0
        return first


@dataclass
class Run:
    """What `train` builds once and the loop's helpers share."""
    cfg: TrainConfig
    rt: Runtime
    out: Path
    loaders: Loaders
    model: torch.nn.Module  # what checkpoints hold
    net: torch.nn.Module  # what runs: the model, or a recurrent model through clips (stills as one-frame clips)
    ddp: torch.nn.Module  # what trains: `net`, under torchrun wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: SegLoss
    heads_loss: HeadsLoss | None  # multi-task models (parts and keypoint heads); None for mask-only ones
    schedule: Schedule
    writer: object | None  # TensorBoard's SummaryWriter, on rank 0 with `tensorboard: true`


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Train per `cfg`, writing into `out_dir`; returns {"model": unwrapped model, "metrics": last evaluation}."""
    rt, out = setup_distributed(cfg), Path(out_dir)
    model = build_model(cfg, rt)
    heads = "heatmaps" in getattr(model, "outputs", ())  # a multi-task model: its samples carry the heads' targets
    loaders = build_loaders(cfg, rt, heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    state = TrainState(boundary_weight=cfg.loss.boundary_weight)
    seed_everything(cfg.seed + rt.rank)
    if resume:
        state = load_training_state(out / "last.pt", model, optimizer, scaler, rt.rank, rt.master)
    net = ClipRunner(model, rt.memory_format) if is_recurrent(model) else model
    ddp = DDP(net, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None) if rt.world > 1 else net
    run = Run(cfg, rt, out, loaders, model, net, ddp, optimizer, scaler,
              criterion=SegLoss(cfg.loss.bce_weight, cfg.loss.region_weight, cfg.loss.region),
              heads_loss=HeadsLoss(cfg.loss.parts_weight, cfg.loss.keypoints_weight,
                                   class_weights=cfg.loss.parts_class_weights) if heads else None,
              schedule=Schedule(cfg, cfg.max_steps or cfg.epochs * loaders.steps_per_epoch),
              writer=open_run_folder(cfg, out, state.step) if rt.master else None)
    metrics = fit(run, state)
    if run.writer:
        run.writer.close()
    if rt.world > 1:
        dist.destroy_process_group()
    return {"model": model, "metrics": metrics}


def fit(run: Run, state: TrainState) -> dict:
    """The loop: optimizer steps to the last (or until the time budget is spent), a log line every
    `log_every` steps, an evaluation and checkpoint every `eval_every` (0: every epoch) and at the end.
    Returns the last evaluation's metrics."""
    cfg, per_epoch = run.cfg, run.loaders.steps_per_epoch
    stop_at, metrics, start = run.schedule.total_steps, {}, time.time()
    train_start = start  # the training clock: evaluations move it forward, so they do not count
    pbar = tqdm(total=stop_at, initial=state.step, disable=not run.rt.master, desc="train", dynamic_ncols=True)
    while state.step < stop_at:
        epoch = state.step // per_epoch
        batches = start_epoch(run, state, epoch)
        for _ in range(state.step % per_epoch, per_epoch):
            lr = run.schedule.lr(state)
            parts = train_step(run, batches, lr)
            state.step += 1
            step, end_of_epoch = state.step, state.step % per_epoch == 0
            train_seconds = time.time() - train_start
            if cfg.time_budget > 0 and out_of_time(train_seconds, cfg.time_budget, run.rt):
                stop_at = step  # the budget is spent: a final evaluation and checkpoint, then stop
            if step % cfg.log_every == 0 or step == stop_at:
                log_losses(run, pbar, parts, step=step, epoch=epoch, lr=lr,
                           boundary_weight=run.criterion.boundary_weight, time=round(time.time() - start, 2))
            pbar.update(1)
            scheduled = step % cfg.eval_every == 0 if cfg.eval_every else end_of_epoch
            if scheduled or step == stop_at:  # an extra final evaluation does not count for the schedule
                t_eval = time.time()
                record = {"step": step, "epoch": epoch, "lr": lr, "train_seconds": round(train_seconds, 1)}
                metrics = evaluate_and_save(run, state, record, scheduled, end_of_epoch)
                train_start += time.time() - t_eval
            else:
                run.schedule.update(state, end_of_epoch)  # no IoU: at an epoch's end, the boundary-loss ramp
            if step >= stop_at:
                break
    pbar.close()
    return metrics


def setup_distributed(cfg: TrainConfig) -> Runtime:
    """The process group under torchrun (nccl on GPUs, gloo on CPUs), CPU threads, autocast dtype."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return Runtime(rank, local_rank, world, device, resolve_amp(cfg.amp, device), memory_format)


def build_loaders(cfg: TrainConfig, rt: Runtime, heads: bool = False) -> Loaders:
    """Every rank draws the same training mix and keeps its share; validation shards are disjoint.
    `heads`: samples carry the multi-task heads' targets."""
    train_set = build_train_dataset(cfg, heads)
    sampler = build_train_sampler(train_set, cfg, rt.rank, rt.world)
    batch, accum = cfg.optim.batch_size, cfg.optim.grad_accum
    common = dict(num_workers=cfg.data.num_workers, pin_memory=rt.device.type == "cuda")
    loader = DataLoader(train_set, batch, sampler=sampler, drop_last=True, **common,
                        generator=torch.Generator().manual_seed(cfg.seed))  # leaves the global RNG alone
    val_batch = 1 if cfg.data.tall_share > 0 else batch  # per-picture orientation: batches of one
    val = {name: DataLoader(ds, val_batch, sampler=range(rt.rank, len(ds), rt.world), **common,
                            persistent_workers=cfg.data.num_workers > 0)
           for name, ds in build_val_datasets(cfg, heads).items()}
    steps_per_epoch = sampler.per_rank // batch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {sampler.per_rank} samples per rank is less than one optimizer step "
                         f"(batch {batch} x grad_accum {accum}); raise data.samples_per_epoch or lower them")
    return Loaders(loader, val, steps_per_epoch)


def build_model(cfg: TrainConfig, rt: Runtime) -> torch.nn.Module:
    """`cfg.model` on the device, with the same initial weights on every rank (or `model.init`'s)."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    if cfg.model.init:
        load_init(model, cfg.model.init, rt.master)
    prefixes = tuple(f"{prefix.rstrip('.')}." for prefix in cfg.model.freeze)  # whole modules: "head" is not "heads"
    frozen = [p for name, p in model.named_parameters() if name.startswith(prefixes)] if prefixes else []
    for p in frozen:  # e.g. a multi-task model's trunk, so its person mask stays the model it started from
        p.requires_grad_(False)
    if cfg.qat:  # fake int8; its state_dict stays the float model's, so checkpoints and --resume are unchanged
        model = QATModel(model)
    return model.to(rt.device, memory_format=rt.memory_format)


def open_run_folder(cfg: TrainConfig, out: Path, step: int):
    """Rank 0's RUNDIR with its config.yaml; returns a TensorBoard writer that drops events past
    `step` (those of a killed run), or None with `tensorboard: false`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(out / "tb", purge_step=step or None)


def start_epoch(run: Run, state: TrainState, epoch: int) -> Iterator[dict]:
    """The epoch's batches from `state.step` on (a resumed run skips those it trained on)."""
    cfg, loader = run.cfg, run.loaders.train
    loader.sampler.set_epoch(epoch, skip=(state.step % run.loaders.steps_per_epoch) * cfg.optim.grad_accum
                             * cfg.optim.batch_size)
    loader.dataset.set_sdm(state.boundary_weight > 0)  # workers start per epoch and see this
    run.criterion.boundary_weight = state.boundary_weight
    return iter(loader)


def train_step(run: Run, batches: Iterator[dict], lr: float) -> dict[str, torch.Tensor]:
    """One optimizer step over `optim.grad_accum` micro-batches. Returns the loss terms averaged over
    them as float64 tensors on the device: numbers only when logged, so a step does not wait for the GPU."""
    cfg, model, optimizer, scaler, accum = run.cfg, run.ddp, run.optimizer, run.scaler, run.cfg.optim.grad_accum
    for group in optimizer.param_groups:
        group["lr"] = lr
    train_mode(model, cfg.model.freeze_bn)
    parts_sum: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        batch = next(batches)
        x, target, valid, sdm = to_device(batch, run.rt)
        sync = micro == accum - 1 or run.rt.world == 1  # all-reduce gradients on the last micro-step only
        with nullcontext() if sync else model.no_sync():
            with run.rt.autocast():
                output = model(x)
            loss, parts = run.criterion(output[0].float() if run.heads_loss else output.float(), target, valid, sdm)
            if run.heads_loss:
                loss, parts = heads_step(run, output, batch, loss, parts)
            scaler.scale(loss / accum).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v.double() / accum
    if cfg.optim.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return parts_sum


def heads_step(run: Run, output: tuple, batch: dict, loss: torch.Tensor, parts: dict) -> tuple[torch.Tensor, dict]:
    """Add the multi-task heads' losses (parts, keypoints) to the mask loss and its logged terms."""
    device = run.rt.device
    extra, extra_parts = run.heads_loss(output[1].float(), output[2].float(), batch["labels"].to(device),
                                        batch["heatmaps"].to(device), batch["heatmap_weight"].to(device))
    total = loss + extra
    return total, {**{k: v for k, v in parts.items() if k != "total"}, **extra_parts, "total": total.detach()}


def to_device(b: dict, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch's (input, mask, valid, sdm or None) on the device. Clips keep their (B, T, ...) frames;
    their targets become (B * T, ...), as the ClipRunner's logits are."""
    if "frames" in b:
        x = b["frames"].to(rt.device, non_blocking=True)
        b = {k: b[k].flatten(0, 1) for k in ("masks", "valid", "sdm") if k in b}
        b["mask"] = b.pop("masks")
    else:
        x = b["image"].to(rt.device, non_blocking=True, memory_format=rt.memory_format)
    sdm = b["sdm"].to(rt.device) if "sdm" in b else None
    return x, b["mask"].to(rt.device), b["valid"].to(rt.device), sdm


def log_losses(run: Run, pbar: tqdm, parts: dict[str, torch.Tensor], **fields) -> None:
    """The loss terms as numbers, averaged over ranks, on the progress bar; rank 0 writes them to
    log.jsonl (`fields`, loss = the total, then its terms) and TensorBoard."""
    values = mean_over_ranks(parts, run.rt.world)
    pbar.set_postfix(loss=f"{values['total']:.4f}", lr=f"{fields['lr']:.2e}")
    if not run.rt.master:
        return
    append_jsonl(run.out / "log.jsonl",
                 {**fields, "loss": values["total"], **{k: v for k, v in values.items() if k != "total"}})
    if run.writer:
        for k, v in values.items():
            run.writer.add_scalar(f"train/{k}", v, fields["step"])
        run.writer.add_scalar("train/lr", fields["lr"], fields["step"])


def evaluate_and_save(run: Run, state: TrainState, record: dict, scheduled: bool, end_of_epoch: bool) -> dict:
    """Evaluate rank 0's weights and update the schedule (with the IoU when `scheduled`); then rank 0
    saves last.pt (best.pt too on a new best), appends `record` (step, epoch, lr, train_seconds) with
    the schedule's state and the metrics to metrics.jsonl, and logs them. Every rank calls this."""
    rt = run.rt
    if rt.world > 1:  # BatchNorm statistics drift apart across ranks: evaluate (and save) rank 0's
        for buffer in run.model.buffers():
            dist.broadcast(buffer, 0)
    metrics = evaluate(run.net, run.loaders.val, rt.device, rt.autocast, rt.memory_format)
    iou = metrics["pooled"]["iou"]
    if run.schedule.update(state, end_of_epoch, iou if scheduled else None) and rt.master:
        tqdm.write(f"step {state.step}: val IoU plateaued at {state.best_iou:.4f}, boundary loss on, lr down")
    improved = iou > state.best_saved_iou
    state.best_saved_iou = max(iou, state.best_saved_iou)
    rng = gather_rng_states(rt.world)  # a collective: every rank calls it
    if rt.master:
        meta = {"config": to_dict(run.cfg), "step": state.step, "epoch": record["epoch"], "metrics": metrics}
        extra = {"optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                 "state": asdict(state), "rng": rng, "world_size": rt.world}
        save_checkpoints(run.out, run.model, run.cfg, meta, extra, best=improved)
        append_jsonl(run.out / "metrics.jsonl", {**record, "boundary_weight": state.boundary_weight,
                                                 "plateaued": state.plateaued, "bad_evals": state.bad_evals,
                                                 "metrics": metrics})
        log_eval(run.writer, run.net, run.loaders.val, metrics, rt.device, rt.memory_format, state.step)
    return metrics


@torch.no_grad()
def evaluate(model: torch.nn.Module, loaders: dict[str, DataLoader], device: torch.device = torch.device("cpu"),
             autocast=nullcontext, memory_format=torch.contiguous_format) -> dict[str, dict[str, float]]:
    """{source: BinaryMetrics.compute(), ..., "pooled": all sources' pixels together}; counts are
    summed over ranks (every rank must call this), so any sharding gives the single-process numbers."""
    model.eval()
    results, pooled = {}, BinaryMetrics()
    for name, loader in loaders.items():
        metrics = BinaryMetrics()
        for b in loader:
            with autocast():
                logits = model(b["image"].to(device, memory_format=memory_format))
            logits = logits[0] if isinstance(logits, tuple) else logits  # multi-task: the person head
            metrics.update(torch.sigmoid(logits.float()), b["mask"].to(device), b["valid"].to(device) > 0)
        metrics.reduce_()
        results[name] = metrics.compute()
        pooled.merge(metrics)
    results["pooled"] = pooled.compute()
    return results


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on GPUs that support it, else fp16 (with GradScaler); off on CPU, where bf16
    autocast is not reliably faster. bf16 on CPU is allowed when asked for."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        if device.type == "cpu":
            raise ValueError("amp=fp16 needs a GPU; use amp=bf16 or amp=off on CPU")
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors, lists and numbers (torch.load weights_only safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(world: int) -> list[dict]:
    """Every rank's RNG state, in rank order (for rank 0 to save)."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def load_training_state(path: Path, model, optimizer, scaler, rank: int, master: bool) -> TrainState:
    """Restore weights, optimizer, scaler and RNG from last.pt; drop log lines past its step."""
    ckpt = read_checkpoint(path)
    if "extra" not in ckpt:
        raise ValueError(f"{path}: has no training state to resume from (was it written by `personseg train`?)")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # QATModel's too: the float names
    if expected != {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}:
        raise CheckpointError(f"{path}: was written with other model settings ({ckpt['arch']} "
                              f"{ckpt.get('model_kwargs', {})}); resume with the run's own config, or train "
                              "into a new --out folder")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["extra"]["optimizer"])
    scaler.load_state_dict(ckpt["extra"]["scaler"])
    rngs = ckpt["extra"]["rng"]
    set_rng_state(rngs[rank % len(rngs)])
    state = TrainState.from_dict(ckpt["extra"]["state"])
    if master:  # a killed run may have logged past its last checkpoint
        for name in ("log.jsonl", "metrics.jsonl"):
            if (path.parent / name).is_file():
                lines = (path.parent / name).read_text().splitlines()
                kept = [line for line in lines if _logged_step(path.parent / name, line) <= state.step]
                (path.parent / name).write_text("".join(line + "\n" for line in kept))
        tqdm.write(f"resuming {path} at step {state.step}")
    return state


def _logged_step(path: Path, line: str) -> float:
    """The step of a log line; a torn line (a kill mid-write) counts as past the checkpoint, so it is dropped."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        tqdm.write(f"{path}: dropping an unreadable line (torn by a kill?): {line[:60]!r}")
        return math.inf


def train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """model.train(); with `freeze_bn` its BatchNorm layers stay in eval mode: they normalize with the
    running statistics they came with and do not update them (their scale and shift still learn). For
    fine-tuning on batches too small or too alike (the frames of a few clips) for batch statistics.
    The BatchNorm layers of frozen parts (`model.freeze`) always stay in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in module.parameters())  # under model.freeze
            if freeze_bn or frozen:
                module.eval()


FRESH_PARTS = ("decoder.grus.", "heads.", "heads_decoder.")  # what model.init may leave fresh


def load_init(model: torch.nn.Module, path: str, master: bool) -> None:
    """Start from a checkpoint's weights. A recurrent model may start from its stateless twin, a
    multi-task model from the UNet it extends: only the ConvGRU cells (decoder.grus.*) or the part and
    keypoint heads are then missing, and they keep their fresh initialisation (or the model's
    `init_fresh` fills them: a multi-task model's own heads decoder copies the trunk's). A PresenceHead
    (shipped `accurate`) is left behind: it reads the encoder that training changes, so it is fitted anew
    on the trained model (scripts/fit_presence.py)."""
    state = {k: v for k, v in load_checkpoint(path)[0].state_dict().items() if not k.startswith("presence.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a size mismatch
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__}: {str(e).splitlines()[-1]}") from e
    if unexpected or any(not k.startswith(FRESH_PARTS) for k in missing):
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); model.init needs a checkpoint of the same model")
    if missing and hasattr(model, "init_fresh"):
        model.init_fresh(missing)
    if missing and master:
        tqdm.write(f"model.init {path}: {len(missing)} tensors ({', '.join(sorted({k.split('.')[0] for k in missing}))}) "
                   "are not in it: they start fresh, or as the model's init_fresh sets them")


def out_of_time(seconds: float, budget_minutes: float, rt: Runtime) -> bool:
    """Has training (evaluations excluded) used its budget? Rank 0's clock decides for every rank."""
    spent = seconds > budget_minutes * 60
    if rt.world == 1:
        return spent
    flag = torch.tensor([float(spent)], device=rt.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def mean_over_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Scalar tensors -> their means over the ranks, as numbers (every rank must call this)."""
    t = torch.stack(list(values.values()))
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return dict(zip(values, t.tolist()))


def save_checkpoints(out: Path, model, cfg: TrainConfig, meta: dict, extra: dict, best: bool) -> None:
    """last.pt with the training state for --resume; best.pt (weights and description only) when `best`."""
    ckpt = dict(arch=cfg.model.name, model_kwargs=cfg.model.kwargs, input_size=cfg.data.input_size,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, meta=meta)
    if best:
        save_checkpoint(out / "best.pt", model, **ckpt)
    save_checkpoint(out / "last.pt", model, **ckpt, extra=extra)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def log_eval(writer, model, loaders: dict[str, DataLoader], metrics: dict, device, memory_format, step: int) -> None:
    """Print the IoUs; to TensorBoard, validation metrics per source and a grid of image | truth |
    prediction for each source's first samples."""
    tqdm.write(f"step {step} val iou " + " ".join(f"{name}={m['iou']:.4f}" for name, m in metrics.items()))
    if writer is None:
        return
    for source, values in metrics.items():
        for k, v in values.items():
            writer.add_scalar(f"val_{source}/{k}", v, step)
    model.eval()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for source, loader in loaders.items():
        samples = [loader.dataset[i] for i in range(min(4, len(loader.dataset)))]
        if not samples:
            continue
        samples = [s for s in samples if s["image"].shape == samples[0]["image"].shape]  # one orientation
        x = torch.stack([s["image"] for s in samples])
        prob = torch.sigmoid(model(x.to(device, memory_format=memory_format)).float()).cpu()
        rows = [torch.cat([(img * std + mean).clamp(0, 1), s["mask"].expand(3, -1, -1), p.expand(3, -1, -1)], 2)
                for img, s, p in zip(x, samples, prob)]
        writer.add_image(f"val_{source}/image_truth_prediction", torch.cat(rows, 1), step)
