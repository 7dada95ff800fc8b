"""The optimizer and its learning-rate schedule, from a
:class:`~ssd_tutorial.config.TrainConfig`.

SGD with momentum and weight decay (paper p.7, Caffe's solver) or AdamW for the tiny CPU
preset; Caffe's bias groups (twice the lr, no decay) when the config asks; a linear
warmup, then the step schedule, as one multiplier per iteration (:func:`lr_factor`).
"""

from __future__ import annotations

import torch
from torch import nn

from ssd_tutorial.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "parameter_groups"]


def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """The learning-rate multiplier at ``iteration``: linear warmup, then x ``lr_gamma``
    at each step.

    Warmup goes linearly from ``warmup_factor`` (iteration 0) to 1 (iteration
    ``warmup_iters``).
    """
    factor = cfg.lr_gamma ** sum(iteration >= step for step in cfg.lr_steps)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor` (stepped once per iteration)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))


def parameter_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """The trainable parameters as optimizer groups: weights, then biases (if they
    differ).

    Caffe's solver (ssd_pascal.py: ``lr_mult: 2, decay_mult: 0`` on every bias) trains
    biases at twice the lr without weight decay; ``cfg.bias_lr_mult`` /
    ``cfg.bias_weight_decay`` say whether to.  With the defaults (1.0, True) everything
    is one group.  A group's ``lr`` is its base lr; the scheduler multiplies each
    group's own base by ``lr_factor``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.bias_lr_mult == 1.0 and cfg.bias_weight_decay:
        return [
            {
                "params": [p for _, p in named],
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
            }
        ]
    # 1-d parameters are the conv biases and the L2Norm scale; only the biases are
    # Caffe's bias blobs (the L2Norm scale is a weight there: lr_mult 1, decay).
    biases = [p for n, p in named if n.endswith(".bias")]
    weights = [p for n, p in named if not n.endswith(".bias")]
    return [
        {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {
            "params": biases,
            "lr": cfg.lr * cfg.bias_lr_mult,
            "weight_decay": cfg.weight_decay if cfg.bias_weight_decay else 0.0,
        },
    ]


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (paper p.7 / Caffe solver), or AdamW
    (``cfg.optimizer``).

    Parameter groups from :func:`parameter_groups`.  Fused kernel on CUDA when this
    torch has it (one launch for all parameters), else foreach.
    """
    groups = parameter_groups(cfg, model)
    if cfg.optimizer == "adamw":
        # Departure (tiny CPU model only): AdamW, betas (momentum, 0.999), decoupled
        # decay.
        kwargs = {"lr": cfg.lr, "betas": (cfg.momentum, 0.999)}
        cls: type[torch.optim.Optimizer] = torch.optim.AdamW
    else:
        kwargs = {"lr": cfg.lr, "momentum": cfg.momentum}
        cls = torch.optim.SGD
    if device.type == "cuda":
        try:
            return cls(groups, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass
    return cls(groups, foreach=True, **kwargs)
