"""Tests for ssd_tutorial.config and the learning-rate schedule of
ssd_tutorial.optim."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssd_tutorial.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    get_config,
    parse_value,
)
from ssd_tutorial.optim import build_scheduler, lr_factor


def test_presets_exist_and_paper_recipe():
    assert sorted(PRESETS) == [
        "finetune",
        "finetune_cpu",
        "shapes_cpu",
        "shapes_gpu",
        "ssd300_coco",
        "ssd300_voc0712",
        "ssd512_voc0712",
    ]
    voc = PRESETS["ssd300_voc0712"]
    # paper p.7 / released solver: batch 32, SGD 1e-3, momentum 0.9, wd 5e-4, 120k its,
    # drops at 80k/100k.
    assert (voc.batch_size, voc.lr, voc.momentum, voc.weight_decay) == (
        32,
        1e-3,
        0.9,
        5e-4,
    )
    assert (voc.max_iters, voc.lr_steps, voc.lr_gamma) == (
        120_000,
        (80_000, 100_000),
        0.1,
    )
    assert voc.backbone_weights == "imagenet" and voc.augment and voc.width_mult == 1.0
    assert voc.grad_clip_norm == 0.0  # the paper does not clip
    # ssd_pascal.py: biases lr_mult 2, decay_mult 0; weights from the xavier filler
    # (fan-in)
    assert (voc.bias_lr_mult, voc.bias_weight_decay, voc.init, voc.optimizer) == (
        2.0,
        False,
        "caffe_xavier",
        "sgd",
    )
    assert PRESETS["shapes_cpu"].width_mult == 0.125
    assert PRESETS["shapes_gpu"].width_mult == 1.0


def test_ssd512_and_coco_presets():
    # SSD512: the VOC recipe at 512 px with the 7-map layout (released
    # ssd_pascal_512.py's solver)
    voc, ssd512 = PRESETS["ssd300_voc0712"], PRESETS["ssd512_voc0712"]
    assert (ssd512.image_size, ssd512.prior_layout) == (512, "ssd512_voc")
    assert (
        ssd512.replace(name=voc.name, image_size=300, prior_layout="ssd300_voc") == voc
    )
    # COCO: released ssd_coco.py -- 400k iterations, drops at 280k and 360k, batch 32,
    # lr 1e-3; the paper's COCO default boxes; COCO JSON files; pycocotools AP in the
    # periodic evaluation
    coco = PRESETS["ssd300_coco"]
    assert (coco.max_iters, coco.lr_steps, coco.batch_size, coco.lr) == (
        400_000,
        (280_000, 360_000),
        32,
        1e-3,
    )
    assert (coco.prior_layout, coco.dataset, coco.eval_coco) == (
        "ssd300_coco",
        "files",
        True,
    )
    assert coco.data.endswith("instances_train2017.json") and coco.val_data.endswith(
        "instances_val2017.json"
    )


def test_finetune_presets_read_files_and_keep_their_drops_inside_the_schedule():
    for name in ("finetune", "finetune_cpu"):
        cfg = PRESETS[name]
        assert (
            cfg.dataset == "files"
            and cfg.data
            and all(s < cfg.max_iters for s in cfg.lr_steps)
        )
    assert (
        PRESETS["finetune"].backbone_weights == "imagenet"
        and PRESETS["finetune_cpu"].width_mult == 0.125
    )
    with pytest.raises(ValueError, match="go together"):
        get_config("shapes_cpu", data="mine/")
    with pytest.raises(ValueError, match="val_fraction"):
        get_config("finetune", val_fraction=1.0)


def test_config_is_frozen():
    cfg = get_config("shapes_cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_get_config_overrides_and_unknown_preset():
    cfg = get_config("shapes_cpu", max_iters=7, lr=0.5)
    assert (cfg.max_iters, cfg.lr) == (7, 0.5)
    assert PRESETS["shapes_cpu"].max_iters != 7  # the preset itself is untouched
    with pytest.raises(KeyError, match="shapes_cpu"):
        get_config("no_such_preset")


def test_command_line_overrides_all_forms():
    cfg = apply_overrides(
        get_config("shapes_cpu"),
        [
            "--set",
            "lr=0.02",
            "--batch-size",
            "4",
            "--lr_steps=10,20",
            "--augment",
            "false",
            "--backbone-weights",
            "none",
            "--set",
            "max_iters=1e3",
        ],
    )
    assert cfg.lr == 0.02 and cfg.batch_size == 4 and cfg.lr_steps == (10, 20)
    assert (
        cfg.augment is False and cfg.backbone_weights is None and cfg.max_iters == 1000
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "no_field=1"], "no field"),
        (["--batch-size", "four"], "batch_size"),
        (["--augment", "maybe"], "augment"),
        (["--lr"], "needs a value"),
        (["stray"], "unexpected argument"),
    ],
)
def test_bad_overrides_name_the_problem(args, message):
    with pytest.raises((ValueError, KeyError), match=message):
        apply_overrides(get_config("shapes_cpu"), args)


def test_invalid_values_rejected():
    with pytest.raises(ValueError, match="amp"):
        get_config("shapes_cpu", amp="fp8")
    with pytest.raises(ValueError, match="lr_steps"):
        get_config("shapes_cpu", lr_steps=(20, 10))
    with pytest.raises(ValueError, match="batch_size"):
        get_config("shapes_cpu", batch_size=0)


def test_to_dict_is_plain_and_round_trips():
    for cfg in PRESETS.values():
        d = cfg.to_dict()
        assert all(
            isinstance(v, (str, int, float, bool, list, type(None))) for v in d.values()
        )
        assert config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({**PRESETS["shapes_cpu"].to_dict(), "bogus": 1})


def test_parse_value_types():
    assert parse_value("lr_steps", "") == ()
    assert parse_value("compile", "YES") is True
    assert parse_value("voc_roots", "a,b") == ("a", "b")


def test_lr_factor_by_hand():
    cfg = TrainConfig(
        warmup_iters=10,
        warmup_factor=0.1,
        lr_steps=(20, 30),
        lr_gamma=0.1,
        max_iters=40,
    )
    # warmup: 0.1 at 0, then linear: at 5 -> 0.1 * 0.5 + 0.5 = 0.55; 1 from 10 on.
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 5) == pytest.approx(0.55)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 19) == pytest.approx(1.0)
    assert lr_factor(cfg, 20) == pytest.approx(0.1)
    assert lr_factor(cfg, 30) == pytest.approx(0.01)


def test_scheduler_follows_lr_factor():
    # The paper recipe's shape, compressed 1000x so the real scheduler can be stepped
    # through it.
    cfg = get_config(
        "ssd300_voc0712", warmup_iters=4, max_iters=120, lr_steps=(80, 100)
    )
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer)
    seen = []
    for it in range(120):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([cfg.lr * lr_factor(cfg, it) for it in range(120)])
    assert seen[0] == pytest.approx(1e-3 / 3) and seen[2] == pytest.approx(
        1e-3 * (1 / 3 * 0.5 + 0.5)
    )
    assert (
        seen[79] == pytest.approx(1e-3)
        and seen[80] == pytest.approx(1e-4)
        and seen[100] == pytest.approx(1e-5)
    )


def test_paper_schedule_values():
    cfg = get_config("ssd300_voc0712")
    assert [
        cfg.lr * lr_factor(cfg, it)
        for it in (500, 79_999, 80_000, 99_999, 100_000, 119_999)
    ] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_parse_value_ints_in_exponent_form():
    assert parse_value("lr_steps", "80e3,1e5") == (80_000, 100_000)
    assert parse_value("max_iters", "1.2e5") == 120_000
    with pytest.raises(ValueError, match="checkpoint_every"):
        parse_value("checkpoint_every", "1.5e0")  # would silently become 1


def _number_fields() -> dict[str, str]:
    return {
        f.name: f.type
        for f in dataclasses.fields(TrainConfig)
        if f.type in ("int", "float", "tuple[int, ...]")
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("eval_every", -1),
        ("checkpoint_every", -1),
        ("warmup_iters", -5),
        ("grad_clip_norm", -1.0),
        ("momentum", 1.0),
        ("iou_threshold", 0.0),
    ],
)
def test_values_out_of_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        get_config("shapes_cpu", **{field: value})


def test_every_number_field_refuses_nan_inf_and_negatives():
    fields = _number_fields()
    assert {"lr", "max_iters", "lr_steps", "momentum"} <= set(fields) and len(
        fields
    ) > 20  # the filter finds them
    for name, kind in fields.items():
        for bad in (float("nan"), float("inf"), -1):
            value = (bad,) if kind.startswith("tuple") else bad
            with pytest.raises(ValueError, match=rf"^{name} must be"):
                get_config("shapes_cpu", **{name: value})


def test_zero_still_means_off_where_documented():
    cfg = get_config(
        "shapes_cpu",
        warmup_iters=0,
        grad_clip_norm=0.0,
        checkpoint_every=0,
        eval_every=0,
        shapes_val_images=0,
        num_workers=0,
        weight_decay=0.0,
    )
    assert cfg.grad_clip_norm == 0.0 and cfg.checkpoint_every == 0
