"""The training loop: one :class:`Trainer` per run -- model, optimizer, schedule, data,
checkpoints.

What one iteration does (paper p.5-6): sample a batch of augmented images, run SSD300
(``loc [B, 8732, 4]``, ``conf_logits [B, 8732, C]``), match the ground truth to the 8732
default boxes and score the guesses with the multibox loss (smooth L1 + cross-entropy
with hard negative mining), then one SGD step with momentum and weight decay.

Exact resume: the data order and every image's augmentation follow from ``(seed,
iteration)`` (:mod:`ssd_tutorial.sampling`); the checkpoint holds everything else
(weights, optimizer, scheduler, scaler, random states), so a run resumed from iteration
k continues exactly as one never stopped.

Several processes (``torchrun``): ``cfg.batch_size`` is the global batch; process r
takes its slice of every global batch and the loss is normalized by the number of
positives of the WHOLE global batch (:func:`compute_loss`), so W processes compute the
same step as one (up to float summation order).

What the trainer is set up with (process group, device, precision, model wrappers, the
batches, a checkpoint's plain data, the loss window) is in
:mod:`ssd_tutorial.train_setup`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssd_tutorial.checkpoint import (
    latest_checkpoint,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ssd_tutorial.config import TrainConfig
from ssd_tutorial.loss import MultiboxLoss, multibox_loss
from ssd_tutorial.optim import build_optimizer, build_scheduler
from ssd_tutorial.own_data import category_ids_of
from ssd_tutorial.recipes import (
    build_datasets,
    class_names_for,
    initial_model,
    worker_transform,
)
from ssd_tutorial.rundir import (
    MetricsWriter,
    check_new_run,
    progress_bar,
    start_run_dir,
    tensorboard_writer,
)
from ssd_tutorial.train_setup import (
    LossWindow,
    amp_dtype,
    batch_to_device,
    check_same_batch_size,
    init_distributed,
    load_scheduler_state,
    pick_device,
    scheduler_state,
    seed_everything,
    train_loader,
    unwrap,
    wrap_for_training,
)
from ssd_tutorial.validate import evaluate_model

__all__ = ["Trainer", "compute_loss"]


def compute_loss(
    loss_fn: nn.Module,
    loc: Tensor,
    conf_logits: Tensor,
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    world_size: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """The multibox loss of this process's images: ``(total, loc, conf)`` 0-dim tensors.

    ``loss_fn`` is a :class:`ssd_tutorial.loss.MultiboxLoss` (priors, ratio, alpha,
    threshold).  With several processes the loss is re-normalized by the positives of
    the whole global batch and multiplied by ``world_size`` (DDP averages gradients over
    processes), so the gradient is that of one process holding the whole batch.  No host
    synchronisation.
    """
    # [B, P, 4] encoded, [B, P] long
    loc_targets, labels = loss_fn.targets(gt_boxes, gt_labels)
    out = multibox_loss(
        loc, conf_logits, loc_targets, labels, loss_fn.neg_pos_ratio, loss_fn.alpha
    )
    if world_size == 1:
        return out.total, out.loc, out.conf
    local_n = (labels > 0).sum().to(out.total.dtype)
    global_n = local_n.detach().clone()
    dist.all_reduce(global_n)
    scale = local_n.clamp(min=1) * world_size / global_n.clamp(min=1)
    return out.total * scale, out.loc * scale, out.conf * scale


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------
class Trainer:
    """One training run: model, optimizer, schedule, data, checkpoints, metrics.

    ``Trainer(cfg, output_dir).fit()`` trains to ``cfg.max_iters`` (or ``stop_at``).
    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process
    group itself. ``output_dir`` must not hold another run unless ``resume`` (continue
    it) or ``overwrite`` (delete its :func:`~ssd_tutorial.rundir.run_files` first) is
    given.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        output_dir: str | Path,
        resume: bool = False,
        device: str | torch.device | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        if resume and overwrite:
            raise ValueError(
                "resume and overwrite exclude each other: continue the run or replace "
                "it"
            )
        if not resume:
            # Every process checks before the process group forms: nothing is written
            # before then.
            check_new_run(self.output_dir, overwrite)
        self.world_size, self.rank, local_rank = init_distributed(device)
        self.device = pick_device(device, local_rank)
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        # first: for your own data it names the classes (checked before any model)
        self._build_data()
        self._build_model()
        self._build_optimization()
        self.resumed_from = self._resume() if resume else None
        self.train_model = wrap_for_training(
            self.model, self.world_size, self.device, cfg.compile
        )
        if self.is_main:
            start_run_dir(self.output_dir, cfg.to_dict(), overwrite)
            self.metrics = MetricsWriter(
                self.output_dir / "metrics.jsonl", self.resumed_from
            )
            self.tb = tensorboard_writer(cfg.tensorboard, self.output_dir)
        self._stop_requested = False

    # -- setup helpers -----------------------------------------------------------------
    def _build_data(self) -> None:
        """The datasets; with ``augment_on_gpu`` batched augmentation on the training
        device (:mod:`ssd_tutorial.gpu_augmentation`) instead of SSDAugmentation in the
        workers."""
        cfg = self.cfg
        self.gpu_augment = cfg.augment_on_gpu and cfg.augment
        self.train_set, self.val_set = build_datasets(cfg, worker_transform(cfg))
        self.category_ids = (
            category_ids_of(self.train_set) if cfg.dataset == "files" else None
        )

    def _build_model(self) -> None:
        """The seeded model on the device and its default boxes (the fine-tuned weights'
        own)."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.class_names = class_names_for(cfg, self.train_set)
        self.num_classes = len(self.class_names) + 1
        model = initial_model(
            cfg, self.num_classes, log=_to_stderr if self.is_main else None
        )
        self.prior_config = model.prior_config
        # [P, 4] cxcywh normalized (8732 for SSD300)
        self.priors = model.default_boxes().to(self.device)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _build_optimization(self) -> None:
        """Loss, optimizer, schedule, fp16 scaler and the counters a checkpoint
        restores."""
        cfg = self.cfg
        self.loss_fn = MultiboxLoss(
            self.priors, cfg.neg_pos_ratio, cfg.alpha, cfg.iou_threshold
        ).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.device)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16
        )
        self.iteration = 0
        self.nonfinite_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=self.device)

    def _resume(self) -> int:
        """Load the newest checkpoint that reads (a last.pt cut short falls back to
        checkpoint_*.pt, with a warning); returns its iteration."""
        if latest_checkpoint(self.output_dir) is None:
            raise FileNotFoundError(
                "--resume: no checkpoint (last.pt or checkpoint_*.pt) in "
                f"{self.output_dir}"
            )
        _, state = load_latest_checkpoint(self.output_dir, map_location=self.device)
        self.load_state(state)
        return self.iteration

    def data_loader(self, start: int, end: int) -> DataLoader:
        """Batches of iterations ``start .. end-1`` for this process
        (:func:`train_loader`)."""
        return train_loader(
            self.train_set,
            self.cfg,
            start,
            end,
            self.rank,
            self.world_size,
            self.device,
        )

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; plain data only (loads with
        weights_only=True)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "rng": rng_state(),
            "data_order": {
                "seed": self.cfg.seed,
                "next_iteration": self.iteration,
                "global_batch": self.cfg.batch_size,
            },
            "nonfinite_streak": int(self.nonfinite_streak),
            "skipped_steps": int(self.skipped_steps),
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "prior_config": self.prior_config.to_dict(),
            **(
                {"category_ids": list(self.category_ids)}
                if self.category_ids is not None
                else {}
            ),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the data order follows from the iteration)."""
        check_same_batch_size(state, self.cfg.batch_size)
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_scheduler_state(self.scheduler, state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.nonfinite_streak.fill_(int(state.get("nonfinite_streak", 0)))
        self.skipped_steps.fill_(int(state.get("skipped_steps", 0)))
        set_rng_state(state["rng"])

    def save(self) -> Path | None:
        """Checkpoint the current iteration (main process only)."""
        if not self.is_main:
            return None
        return save_checkpoint(
            self.state_dict(),
            self.output_dir,
            self.iteration,
            self.cfg.keep_checkpoints,
        )

    # -- one step ----------------------------------------------------------------------
    def train_step(
        self, images: Tensor, gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> dict[str, Tensor]:
        """One SGD step on a batch; returns detached 0-dim tensors (no host
        synchronisation on CUDA).

        ``images``: float ``[B, 3, 300, 300]`` normalized; ``gt_boxes``: B tensors
        ``[G_i, 4]`` normalized xyxy; ``gt_labels``: B long tensors ``[G_i]`` (1-based).
        A non-finite loss skips the update (weights and momentum untouched).
        """
        cfg = self.cfg
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loc, conf_logits = self.train_model(images)  # [B, 8732, 4], [B, 8732, C]
        total, loc_loss, conf_loss = compute_loss(
            self.loss_fn, loc, conf_logits, gt_boxes, gt_labels, self.world_size
        )

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if cfg.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            # Departure from the paper: clipping (off in ssd300_voc0712), for
            # from-scratch runs.
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), cfg.grad_clip_norm, foreach=True
            )
        nonfinite = ~torch.isfinite(total.detach())
        self._step_unless(nonfinite)
        # a skipped step makes LambdaLR warn about the call order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.nonfinite_streak = torch.where(
            nonfinite,
            self.nonfinite_streak + 1,
            torch.zeros_like(self.nonfinite_streak),
        )
        self.skipped_steps = self.skipped_steps + nonfinite.long()
        return {
            "loss": total.detach(),
            "loc": loc_loss.detach(),
            "conf": conf_loss.detach(),
        }

    def _step_unless(self, nonfinite: Tensor) -> None:
        """Optimizer step, skipped when ``nonfinite`` (0-dim bool) is true."""
        if self.scaler.is_enabled():
            # fp16: the scaler skips steps with inf/NaN gradients itself (and lowers its
            # scale).
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused") and self.optimizer.state:
            # The fused kernel reads `found_inf` on the device and skips the whole
            # update (weights and momentum) when it is 1: no host synchronisation.  Not
            # on the very first step: a skipped first step would leave the new momentum
            # buffers uninitialized.
            self.optimizer.found_inf = nonfinite.float()  # type: ignore[attr-defined]
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        # host check: free on CPU, one synchronisation on CUDA
        elif not bool(nonfinite):
            self.optimizer.step()

    def _to_device(
        self, batch: tuple[Tensor | list[Tensor], Tensor, Tensor, list[int]]
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """A loader batch on the device, augmented there with ``augment_on_gpu``
        (:func:`batch_to_device`)."""
        return batch_to_device(
            batch, self.device, self.cfg, self.gpu_augment, self.iteration, self.rank
        )

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """VOC mAP@0.5 (11-point) of the current model on up to ``eval_images`` val
        images (and pycocotools' AP under ``"coco"`` when ``cfg.eval_coco``)."""
        if self.val_set is None:
            return None
        return evaluate_model(
            unwrap(self.model),
            self.val_set,
            self.class_names,
            self.device,
            max_images=self.cfg.eval_images,
            coco=self.cfg.eval_coco,  # the model's boxes and input size
        )

    # -- the loop ----------------------------------------------------------------------
    def fit(
        self,
        stop_at: int | None = None,
        time_limit_s: float | None = None,
        save_final: bool = True,
    ) -> dict[str, Any]:
        """Train from ``self.iteration`` to ``stop_at`` (default ``cfg.max_iters``);
        returns a summary.

        ``time_limit_s`` also stops the run once that many seconds have passed.  A
        checkpoint is written at the end unless ``save_final`` is False (and one was not
        just written), and when an error ends the loop between steps (a bad image, say),
        before it is re-raised.
        """
        cfg = self.cfg
        end = min(stop_at if stop_at is not None else cfg.max_iters, cfg.max_iters)
        start = self.iteration
        # signal.signal works only in the main thread
        previous_handler = (
            signal.signal(signal.SIGTERM, self._request_stop)
            if _in_main_thread()
            else None
        )
        bar = progress_bar(total=end, initial=start, enabled=self.progress)
        self.model.train()
        losses: list[dict[str, Any]] = []
        window, t0 = LossWindow(), time.perf_counter()
        saved_at, stopped_by_signal = start, False
        # True while an update is under way: the state is then not that of one iteration
        stepping = False
        try:
            for batch in self.data_loader(start, end) if end > start else []:
                images, gt_boxes, gt_labels = self._to_device(batch)
                stepping = True
                out = self.train_step(images, gt_boxes, gt_labels)
                self.iteration += 1
                stepping = False
                window.add(out, cfg.batch_size)
                at_log = self.iteration % cfg.log_every == 0 or self.iteration == end
                if at_log:
                    losses.append(self._log_window(window, bar))
                    stopped_by_signal = self._stop_agreed()
                if (
                    self._stop_requested
                    and self.world_size == 1
                    and not stopped_by_signal
                ):
                    # one process: stop now (several agree at log intervals)
                    stopped_by_signal = True
                    if not at_log:
                        losses.append(self._log(window))
                bar.update(1)
                if (
                    cfg.eval_every
                    and self.iteration % cfg.eval_every == 0
                    and self.iteration != end
                ):
                    self._evaluate_and_log()
                    # the evaluation's time is not training time
                    window.start = time.perf_counter()
                if stopped_by_signal:
                    break
                if (
                    time_limit_s is not None
                    and time.perf_counter() - t0 >= time_limit_s
                ):
                    if not at_log:
                        losses.append(self._log(window))
                    break
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                    self.save()
                    saved_at = self.iteration
        except (Exception, KeyboardInterrupt) as error:
            # As on SIGTERM: keep the iterations since the last checkpoint.  Not
            # mid-update (the weights may be half stepped), nor when training diverged
            # (FloatingPointError: the advice is to go back to an earlier checkpoint,
            # which must stay the newest).
            if (
                not stepping
                and not isinstance(error, FloatingPointError)
                and saved_at != self.iteration
            ):
                self._save_after_error(error)
            raise
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        elapsed = time.perf_counter() - t0
        if saved_at != self.iteration and (save_final or stopped_by_signal):
            self.save()
        return self._finish(start, end, elapsed, losses, stopped_by_signal)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def _finish(
        self,
        start: int,
        end: int,
        elapsed: float,
        losses: list[dict[str, Any]],
        stopped_by_signal: bool,
    ) -> dict[str, Any]:
        """After the loop (and its last checkpoint): the final evaluation and
        :meth:`fit`'s summary."""
        cfg = self.cfg
        if stopped_by_signal and self.is_main:
            print(
                f"SIGTERM: checkpoint written at iteration {self.iteration}; resume "
                "with --resume",
                file=sys.stderr,
            )
        final_eval = None
        if not stopped_by_signal and cfg.eval_every and self.iteration == end:
            final_eval = self._evaluate_and_log()
        if self.is_main and self.tb is not None:
            self.tb.flush()
        trained = self.iteration - start
        return {
            "config": cfg.name,
            "iterations": self.iteration,
            "trained_iterations": trained,
            "seconds": elapsed,
            "img_per_s": trained * cfg.batch_size / elapsed if elapsed > 0 else 0.0,
            "losses": losses,
            "final_loss": losses[-1]["loss"] if losses else None,
            "map50": final_eval["map"] if final_eval else None,
            "skipped_steps": int(self.skipped_steps),
            "stopped_by_signal": stopped_by_signal,
            "output_dir": str(self.output_dir),
        }

    def _save_after_error(self, error: BaseException) -> None:
        """Checkpoint the last complete iteration; a failure here must not hide
        ``error``."""
        try:
            self.save()
        except Exception as save_error:  # it must not hide `error`
            print(
                f"could not write a checkpoint after the error: {save_error}",
                file=sys.stderr,
            )
            return
        if self.is_main:
            print(
                f"{type(error).__name__} in iteration {self.iteration + 1}: "
                f"checkpoint written at iteration {self.iteration}; fix the cause and "
                "resume with --resume",
                file=sys.stderr,
            )

    def _stop_agreed(self) -> bool:
        """True when any process got SIGTERM (all processes agree, at log intervals)."""
        flag = torch.tensor(float(self._stop_requested), device=self.device)
        if self.world_size > 1:
            dist.all_reduce(flag)
        return bool(flag > 0)

    def _log_window(self, window: LossWindow, bar: Any) -> dict[str, Any]:
        """:meth:`_log` at a log interval: the record also goes to the progress bar, and
        the window starts afresh."""
        record = self._log(window)
        bar.set_postfix(
            loss=f"{record['loss']:.3f}",
            lr=f"{record['lr']:.2e}",
            img_s=f"{record['img_per_s']:.0f}",
        )
        window.reset()
        return record

    def _log(self, window: LossWindow) -> dict[str, Any]:
        """Average the window's losses (the one host synchronisation per log interval),
        write them."""
        seconds = window.seconds()
        loss, loc, conf = window.mean_losses(self.world_size)
        streak = int(self.nonfinite_streak)
        if streak >= self.cfg.max_nonfinite:
            raise FloatingPointError(
                f"{streak} non-finite losses in a row (last at iteration "
                f"{self.iteration}); the steps were skipped but training is diverging: "
                f"lower lr (now {self.cfg.lr}), raise warmup_iters or set "
                "grad_clip_norm, then resume from the last checkpoint"
            )
        record = {
            "iteration": self.iteration,
            "loss": loss,
            "loc": loc,
            "conf": conf,
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": window.images / seconds if seconds > 0 else 0.0,
            "skipped_steps": int(self.skipped_steps),
        }
        if self.is_main:
            self.metrics.write(record)
            if self.tb is not None:
                for key in ("loss", "loc", "conf", "lr", "img_per_s"):
                    self.tb.add_scalar(f"train/{key}", record[key], self.iteration)
        return record

    def _evaluate_and_log(self) -> dict[str, Any] | None:
        """:meth:`evaluate` on the main process, written to the metrics (all processes
        wait for it)."""
        result = self.evaluate() if self.is_main else None
        if self.is_main and result is not None:
            record = {
                "iteration": self.iteration,
                "map": result["map"],
                "ap": result["ap"],
            }
            if "coco" in result:  # {"map": AP@[.5:.95], "map50", "map75"}
                record["coco"] = result["coco"]
            self.metrics.write(record)
            if self.tb is not None:
                self.tb.add_scalar("val/map50", result["map"], self.iteration)
                if "coco" in result:
                    self.tb.add_scalar(
                        "val/coco_ap", result["coco"]["map"], self.iteration
                    )
        if self.world_size > 1:
            dist.barrier()
        self.model.train()
        return result

    def close(self) -> None:
        """Close the TensorBoard writer (main process)."""
        if self.is_main and self.tb is not None:
            self.tb.close()
