"""Tests for the training layer (trainer, sampling, optim, recipes, rundir), its CLI
ssd_tutorial.train and ssd_tutorial.checkpoint: the loop, exact resume, crashes, DDP.

All runs use the tiny model on a few ShapesDataset images (with the SSD augmentation on,
so resume also has to reproduce the random crops) and one CPU thread, so results are
bit-exact.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssd_tutorial.checkpoint import latest_checkpoint, load_checkpoint, save_atomic
from ssd_tutorial.config import get_config
from ssd_tutorial.sampling import ResumableBatchSampler, SeededItems
from ssd_tutorial.train import train
from ssd_tutorial.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**changes):
    """shapes_cpu shrunk to seconds: 16 images, batch 2, 4 iterations, a log line per
    iteration."""
    base = dict(
        shapes_train_images=16,
        shapes_val_images=0,
        batch_size=2,
        max_iters=4,
        warmup_iters=2,
        lr_steps=(3,),
        log_every=1,
        checkpoint_every=2,
        num_workers=0,
    )
    base.update(changes)
    return get_config("shapes_cpu", **base)


CLI_OVERRIDES = [
    "--set",
    "shapes_train_images=16",
    "--set",
    "shapes_val_images=0",
    "--set",
    "warmup_iters=2",
    "--set",
    "lr_steps=3",
    "--set",
    "log_every=1",
    "--set",
    "num_workers=0",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-exact CPU results need the same thread count in every run (and in the
    subprocesses)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def losses(run_dir: Path) -> dict[int, float]:
    records = [
        json.loads(l)
        for l in (run_dir / "metrics.jsonl").read_text().splitlines()
        if l.strip()
    ]
    return {r["iteration"]: r["loss"] for r in records if "loss" in r}


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of tiny_cfg(): the baseline every resume test must
    reproduce."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("reference")
    summary = train(tiny_cfg(), run_dir, progress=False)
    return run_dir, summary


# -- data order ------------------------------------------------------------------------
def test_sampler_is_a_function_of_seed_and_iteration():
    full = list(
        ResumableBatchSampler(10, 4, seed=3, start_iteration=0, end_iteration=7)
    )
    tail = list(
        ResumableBatchSampler(10, 4, seed=3, start_iteration=4, end_iteration=7)
    )
    assert tail == full[4:]
    # 10 items, batch 4: 2 batches per epoch, the 2 leftover items are dropped; each
    # epoch draws distinct items, positions count items consumed.
    for epoch in range(3):
        indices = [i for i, _ in full[2 * epoch]] + [i for i, _ in full[2 * epoch + 1]]
        assert len(set(indices)) == 8
    assert [p for _, p in full[5]] == [20, 21, 22, 23]
    other_seed = list(
        ResumableBatchSampler(10, 4, seed=4, start_iteration=0, end_iteration=7)
    )
    assert other_seed != full


def test_sampler_ranks_split_each_global_batch():
    single = list(ResumableBatchSampler(12, 4, seed=0, end_iteration=5))
    rank0 = list(
        ResumableBatchSampler(12, 4, seed=0, end_iteration=5, rank=0, world_size=2)
    )
    rank1 = list(
        ResumableBatchSampler(12, 4, seed=0, end_iteration=5, rank=1, world_size=2)
    )
    assert [a + b for a, b in zip(rank0, rank1)] == single
    with pytest.raises(ValueError, match="divisible"):
        ResumableBatchSampler(12, 3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4, seed=0)


def test_seeded_items_repeat_and_leave_global_rng_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.rand(3)

    items = SeededItems(Noisy(), seed=1)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = items[(2, 40)]
    assert torch.equal(torch.rand(1), expected_next)  # caller's generator untouched
    assert torch.equal(items[(2, 40)], a)
    assert not torch.equal(items[(2, 41)], a)


# -- end to end and exact resume -------------------------------------------------------
def test_end_to_end_loss_goes_down(reference_run):
    run_dir, summary = reference_run
    assert summary["iterations"] == 4 and summary["skipped_steps"] == 0
    curve = losses(run_dir)
    assert sorted(curve) == [1, 2, 3, 4]
    assert curve[4] < curve[1]
    assert sorted(p.name for p in run_dir.glob("checkpoint_*.pt")) == [
        "checkpoint_0000002.pt",
        "checkpoint_0000004.pt",
    ]
    state = load_checkpoint(run_dir / "last.pt")  # weights_only=True inside
    assert state["iteration"] == 4 and state["config"]["batch_size"] == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "data_order"} <= set(
        state
    )
    assert set(state["rng"]) >= {"torch", "numpy", "python"}


def test_stop_then_resume_equals_uninterrupted(reference_run, tmp_path):
    ref_dir, _ = reference_run
    # stops between checkpoints
    first = train(tiny_cfg(), tmp_path, max_iters=1, progress=False)
    assert first["iterations"] == 1 and (tmp_path / "checkpoint_0000001.pt").exists()
    second = train(tiny_cfg(), tmp_path, resume=True, progress=False)
    assert second["iterations"] == 4 and second["trained_iterations"] == 3
    assert losses(tmp_path) == losses(ref_dir)  # exact equality, iteration by iteration
    ref, got = final_params(ref_dir), final_params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_sigkill_resumes_from_last_complete_checkpoint(reference_run, tmp_path):
    ref_dir, _ = reference_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "ssd_tutorial.train",
        "--config",
        "shapes_cpu",
        "--output-dir",
        str(tmp_path),
        "--no-progress",
        *CLI_OVERRIDES,
        "--set",
        "batch_size=2",
        "--set",
        "max_iters=1000",
        "--set",
        "checkpoint_every=1",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint_0000001.pt").exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        # SIGKILL: no handler runs, whatever was being written stays half-written
        proc.kill()
        proc.wait()
    # what a kill during a write would leave: a partial temp file, which must be ignored
    (tmp_path / ".checkpoint_0000099.pt.1234.tmp").write_bytes(b"\x80\x02partial")
    resumed_at = load_checkpoint(latest_checkpoint(tmp_path))["iteration"]
    assert 1 <= resumed_at < 4
    train(tiny_cfg(), tmp_path, resume=True, progress=False)
    assert losses(tmp_path) == losses(ref_dir)
    ref, got = final_params(ref_dir), final_params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path, monkeypatch):
    original = Trainer.train_step

    def step_then_sigterm(self, *args):
        out = original(self, *args)
        # (incremented after the step returns): raised during iteration 2
        if self.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    summary = train(tiny_cfg(checkpoint_every=100), tmp_path, progress=False)
    assert summary["stopped_by_signal"] and summary["iterations"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2
    # handler restored (no crash here)
    assert signal.getsignal(signal.SIGTERM) is not None


# -- safety ----------------------------------------------------------------------------
class _Payload:
    """A pickled object: what weights_only=True must refuse to load."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "last.pt"
    torch.save({"model": {}, "iteration": 3, "payload": _Payload()}, bad)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(bad)
    with pytest.raises(RuntimeError, match="refusing"):
        train(tiny_cfg(), tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint_and_missing_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_cfg(), tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_save_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resume_with_other_batch_size_refused(reference_run, tmp_path):
    ref_dir, _ = reference_run
    (tmp_path / "last.pt").write_bytes((ref_dir / "last.pt").read_bytes())
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(tiny_cfg(batch_size=4), tmp_path, resume=True, progress=False)


# -- non-finite losses -----------------------------------------------------------------
def _batch(n=2):
    images = torch.randn(n, 3, 300, 300)
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6]])] * n
    labels = [torch.tensor([1])] * n
    return images, boxes, labels


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_loss_skips_the_update(tmp_path, fused):
    trainer = Trainer(tiny_cfg(), tmp_path, progress=False)
    if fused:
        try:
            trainer.optimizer = torch.optim.SGD(
                trainer.model.parameters(), lr=1e-3, momentum=0.9, fused=True
            )
        except (RuntimeError, TypeError, ValueError) as error:
            pytest.skip(f"fused SGD unavailable on this CPU build: {error}")
    images, boxes, labels = _batch()
    # a skipped first step (no momentum yet), then a later one
    for nan_first in (
        True,
        False,
    ):
        if not nan_first:
            assert torch.isfinite(trainer.train_step(images, boxes, labels)["loss"])
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        momentum = {
            id(p): s["momentum_buffer"].clone()
            for p, s in trainer.optimizer.state.items()
        }
        out = trainer.train_step(torch.full_like(images, float("nan")), boxes, labels)
        assert not torch.isfinite(out["loss"])
        after = trainer.model.state_dict()
        # weights untouched
        assert all(torch.equal(before[k], after[k]) for k in before)
        now = {id(p): s["momentum_buffer"] for p, s in trainer.optimizer.state.items()}
        assert now.keys() == momentum.keys() and all(
            torch.equal(momentum[k], now[k]) for k in now
        )
        assert int(trainer.nonfinite_streak) == 1
    assert int(trainer.skipped_steps) == 2
    trainer.train_step(images, boxes, labels)
    assert int(trainer.nonfinite_streak) == 0
    assert any(
        not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()
    )


def test_repeated_nonfinite_losses_abort_with_a_clear_message(tmp_path, monkeypatch):
    import ssd_tutorial.trainer as trainer_module

    def nan_loss(loss_fn, loc, conf_logits, gt_boxes, gt_labels, world_size=1):
        total = (loc.sum() + conf_logits.sum()) * float("nan")
        return total, total, total

    monkeypatch.setattr(trainer_module, "compute_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        train(tiny_cfg(max_nonfinite=3), tmp_path, progress=False)
    # no checkpoint of the diverged state: the one to go back to stays the newest
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2


# -- several processes -----------------------------------------------------------------
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    cfg = tiny_cfg(batch_size=4, max_iters=2, checkpoint_every=100)
    train(cfg, single_dir, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ssd_tutorial.train",
        "--config",
        "shapes_cpu",
        "--output-dir",
        str(ddp_dir),
        "--no-progress",
        "--device",
        "cpu",
        *CLI_OVERRIDES,
        "--set",
        "batch_size=4",
        "--set",
        "max_iters=2",
        "--set",
        "checkpoint_every=100",
    ]
    result = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = losses(single_dir), losses(ddp_dir)
    assert sorted(ddp) == [1, 2]
    for it in single:
        assert ddp[it] == pytest.approx(single[it], rel=1e-4)
    ref, got = final_params(single_dir), final_params(ddp_dir)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_kaiming_init_rescales_relu_convs_and_keeps_heads():
    from ssd_tutorial.recipes import build_model

    torch.manual_seed(0)
    xavier = build_model(tiny_cfg(init="xavier"), 6)
    torch.manual_seed(0)
    kaiming = build_model(tiny_cfg(init="kaiming"), 6)
    for name in ("loc_heads.0.weight", "conf_heads.5.weight"):
        assert torch.equal(xavier.state_dict()[name], kaiming.state_dict()[name])
    # He-normal, fan-in: std = sqrt(2 / fan_in); conv4_1 of the tiny model has fan_in =
    # 32 * 3 * 3.
    w = kaiming.backbone.conv4_1.weight
    assert w.std().item() == pytest.approx((2 / (32 * 9)) ** 0.5, rel=0.1)
    assert not torch.equal(w, xavier.backbone.conv4_1.weight)


def test_periodic_evaluation_and_tensorboard(tmp_path):
    summary = train(
        tiny_cfg(
            max_iters=2,
            eval_every=1,
            shapes_val_images=4,
            eval_images=4,
            tensorboard=True,
        ),
        tmp_path,
        progress=False,
    )
    records = [
        json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    maps = [r for r in records if "map" in r]
    assert [r["iteration"] for r in maps] == [1, 2]
    assert all(
        0.0 <= r["map"] <= 1.0
        and set(r["ap"]) == {"ellipse", "rectangle", "triangle", "ring", "cross"}
        for r in maps
    )
    assert summary["map50"] == maps[-1]["map"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_after_a_kill_mid_metrics_line(reference_run, tmp_path):
    """A SIGKILL can cut metrics.jsonl mid-line; resuming must drop that line, not crash
    on it."""
    ref_dir, _ = reference_run
    train(tiny_cfg(), tmp_path, max_iters=2, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        # the half-written record of iteration 3
        f.write('{"iteration": 3, "loss": 1.2')
    train(tiny_cfg(), tmp_path, resume=True, progress=False)
    assert losses(tmp_path) == losses(ref_dir)


def test_cli_resume_with_an_override_keeps_the_run_config(
    reference_run, tmp_path, capsys
):
    """``--resume --set field=value`` changes that field of the run's saved config, not
    of the preset."""
    from ssd_tutorial.train import main

    ref_dir, _ = reference_run
    common = ["--config", "shapes_cpu", "--output-dir", str(tmp_path), "--no-progress"]
    assert (
        main(
            [
                *common,
                *CLI_OVERRIDES,
                "--set",
                "batch_size=2",
                "--set",
                "max_iters=4",
                "--max-iters",
                "2",
            ]
        )
        == 0
    )
    assert main([*common, "--resume", "--set", "log_every=2"]) == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (
        saved["shapes_train_images"] == 16
        and saved["batch_size"] == 2
        and saved["log_every"] == 2
    )
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["iterations"] == 4
    ref, got = final_params(ref_dir), final_params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_truncated_checkpoint_is_called_truncated(reference_run, tmp_path):
    ref_dir, _ = reference_run
    cut = tmp_path / "cut.pt"
    cut.write_bytes((ref_dir / "last.pt").read_bytes()[:4096])
    with pytest.raises(RuntimeError, match="cut.pt.*truncated"):
        load_checkpoint(cut)


def test_missing_val_root_warns_and_trains_without_evaluation(tmp_path):
    from ssd_tutorial.recipes import build_datasets

    root = tmp_path / "VOC"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    cfg = tiny_cfg(
        dataset="voc", voc_roots=(str(root),), val_root=str(tmp_path / "VOC2007_typo")
    )
    with pytest.warns(UserWarning, match="VOC2007_typo"):
        train_set, val_set = build_datasets(cfg)
    assert len(train_set) == 1 and val_set is None


MINI100 = ROOT / ".." / "shared" / "data" / "voc2012_mini100"


@pytest.mark.skipif(
    not (MINI100 / "JPEGImages").is_dir(),
    reason="../shared/data/voc2012_mini100 is absent",
)
def test_augment_on_gpu_trains_on_real_photos_of_different_sizes(tmp_path):
    """VOC photos differ in size: with augment_on_gpu the loader hands them over as a
    list and the batched augmentation (here on the CPU) resizes them; a training step
    runs."""
    cfg = tiny_cfg(
        dataset="voc",
        voc_roots=(str(MINI100),),
        train_split="trainval",
        val_root="",
        augment_on_gpu=True,
        batch_size=4,
        max_iters=1,
        checkpoint_every=1,
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    batch = next(iter(trainer.data_loader(0, 1)))
    assert isinstance(batch[0], list) and len({tuple(im.shape) for im in batch[0]}) > 1
    images, boxes, labels = trainer._to_device(batch)
    assert (
        images.shape == (4, 3, cfg.image_size, cfg.image_size)
        and images.dtype == torch.float32
    )
    assert len(boxes) == 4 and all(
        b.shape[-1] == 4 and ((b >= 0) & (b <= 1)).all() for b in boxes
    )
    losses = trainer.train_step(images, boxes, labels)
    assert math.isfinite(float(losses["loss"]))


def test_workers_hand_out_uint8_and_the_device_normalizes(tmp_path):
    """The Trainer's loader carries uint8 images; after _to_device they equal what
    SSDAugmentation's default normalized output gives for the same seeded items."""
    from ssd_tutorial.augmentation import SSDAugmentation
    from ssd_tutorial.data import ShapesDataset

    cfg = tiny_cfg()
    trainer = Trainer(cfg, tmp_path, progress=False)
    batch = next(iter(trainer.data_loader(0, 1)))
    assert batch[0].dtype == torch.uint8
    images, boxes, _ = trainer._to_device(batch)
    assert images.dtype == torch.float32
    reference = SeededItems(
        ShapesDataset(
            cfg.shapes_train_images,
            cfg.image_size,
            cfg.shapes_train_seed,
            SSDAugmentation(cfg.image_size),
        ),
        cfg.seed,
    )
    keys = list(
        ResumableBatchSampler(cfg.shapes_train_images, cfg.batch_size, cfg.seed, 0, 1)
    )[0]
    for k, key in enumerate(keys):
        image, target = reference[key]
        assert torch.equal(images[k], image)
        assert torch.equal(boxes[k], target["boxes"])


# --------------------------------------------------------------------------------------
# Caffe's solver and filler
# --------------------------------------------------------------------------------------
def test_caffe_bias_groups_get_twice_the_lr_and_no_decay() -> None:
    from ssd_tutorial.optim import build_optimizer, build_scheduler
    from ssd_tutorial.recipes import build_model

    cfg = get_config(
        "shapes_cpu",
        bias_lr_mult=2.0,
        bias_weight_decay=False,
        warmup_iters=10,
        warmup_factor=0.1,
    )
    model = build_model(cfg, 6)
    optimizer = build_optimizer(cfg, model, torch.device("cpu"))
    weights, biases = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".bias") for p in biases["params"])
    assert not any(names[id(p)].endswith(".bias") for p in weights["params"])
    # a weight blob in Caffe: decayed
    assert "l2norm.weight" in {names[id(p)] for p in weights["params"]}
    assert len(weights["params"]) + len(biases["params"]) == len(
        list(model.parameters())
    )
    assert (weights["weight_decay"], biases["weight_decay"]) == (cfg.weight_decay, 0.0)
    scheduler = build_scheduler(cfg, optimizer)
    for _ in range(3):  # the warmup scales both groups, each from its own base
        assert biases["lr"] == pytest.approx(2 * weights["lr"])
        optimizer.step()
        scheduler.step()
    assert weights["lr"] == pytest.approx(cfg.lr * (0.1 * 0.7 + 0.3))
    # one group, as before, with the defaults
    plain = build_optimizer(get_config("shapes_cpu"), model, torch.device("cpu"))
    assert (
        len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 5e-4
    )


def test_caffe_xavier_init_has_fan_in_variance() -> None:
    """Caffe's xavier filler: U(-sqrt(3/fan_in), sqrt(3/fan_in)), variance 1/fan_in;
    torch's xavier_uniform_ (the default "xavier") has 2/(fan_in + fan_out)."""
    from ssd_tutorial.recipes import build_model

    model = build_model(
        get_config("shapes_cpu", width_mult=0.5, init="caffe_xavier"), 21
    )
    for conv in (
        model.fc.fc6,
        model.extras[0][0],
        model.conf_heads[0],
        model.backbone.conv3_1,
    ):
        w = conv.weight.detach().double()
        fan_in = w[0].numel()
        assert w.abs().max() <= math.sqrt(3.0 / fan_in) + 1e-7
        assert w.var().item() == pytest.approx(1.0 / fan_in, rel=0.06)
        assert torch.count_nonzero(conv.bias) == 0
    torch_xavier = build_model(
        get_config("shapes_cpu", width_mult=0.5, init="xavier"), 21
    ).fc.fc6.weight.detach()
    fan_out = torch_xavier.shape[0] * torch_xavier[0, 0].numel()
    fan_in = torch_xavier[0].numel()
    assert torch_xavier.var().item() == pytest.approx(
        2.0 / (fan_in + fan_out), rel=0.06
    )


# --------------------------------------------------------------------------------------
# Nothing lost, nothing silently wrong (#20)
# --------------------------------------------------------------------------------------
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    from ssd_tutorial.train import main

    train(tiny_cfg(max_iters=2), tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match=r"holds a run .*--resume.*--overwrite"):
        train(tiny_cfg(), tmp_path, progress=False)
    common = [
        "--config",
        "shapes_cpu",
        "--output-dir",
        str(tmp_path),
        "--no-progress",
        *CLI_OVERRIDES,
    ]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds a run" in err and "Traceback" not in err
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()
    } == before  # nothing touched
    # --overwrite: the old run's files go (checkpoint_0000002.pt with them), nothing
    # else does
    assert (
        main([*common, "--overwrite", "--set", "batch_size=2", "--set", "max_iters=1"])
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [
        "checkpoint_0000001.pt"
    ]
    assert (
        sorted(losses(tmp_path)) == [1]
        and (tmp_path / "notes.txt").read_text() == "mine"
    )
    with pytest.raises(ValueError, match="exclude each other"):
        train(tiny_cfg(), tmp_path, resume=True, overwrite=True, progress=False)


def test_resume_after_last_pt_is_truncated_in_place(reference_run, tmp_path):
    """last.pt cut short where it lies: the numbered checkpoint beside it is another
    file and still reads, and --resume continues from it, exactly."""
    ref_dir, _ = reference_run
    # checkpoints 2 and 3, last.pt = 3
    train(tiny_cfg(), tmp_path, max_iters=3, progress=False)
    last, newest = tmp_path / "last.pt", tmp_path / "checkpoint_0000003.pt"
    assert not os.path.samefile(last, newest)
    with open(last, "r+b") as f:
        f.truncate(4096)
    assert load_checkpoint(newest)["iteration"] == 3
    with pytest.warns(
        UserWarning, match=r"checkpoint_0000003\.pt.*last\.pt.*truncated"
    ):
        train(tiny_cfg(), tmp_path, resume=True, progress=False)
    assert losses(tmp_path) == losses(ref_dir)
    ref, got = final_params(ref_dir), final_params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_load_latest_checkpoint_passes_over_every_unreadable_file(tmp_path):
    from ssd_tutorial.checkpoint import CheckpointError, load_latest_checkpoint

    save_atomic({"iteration": 1}, tmp_path / "checkpoint_0000001.pt")
    save_atomic({"iteration": 2}, tmp_path / "checkpoint_0000002.pt")
    (tmp_path / "checkpoint_0000002.pt").write_bytes(
        (tmp_path / "checkpoint_0000002.pt").read_bytes()[:40]
    )
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(
        UserWarning, match=r"checkpoint_0000001\.pt.*last\.pt.*checkpoint_0000002\.pt"
    ):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "checkpoint_0000001.pt" and state == {"iteration": 1}
    (tmp_path / "checkpoint_0000001.pt").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"no readable checkpoint(.|\n)*last\.pt(.|\n)*checkpoint_0000002",
    ):
        load_latest_checkpoint(tmp_path)


def test_a_write_that_reads_back_differently_keeps_the_old_file(tmp_path, monkeypatch):
    import ssd_tutorial.checkpoint as checkpoint

    path = save_atomic({"a": torch.ones(2)}, tmp_path / "c.pt")
    monkeypatch.setattr(
        checkpoint, "_sha256_of_file", lambda p: b"what a failing disk gave back"
    )
    with pytest.raises(OSError, match="read back differs"):
        save_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _voc_run_cfg(tmp_path):
    from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset, write_voc_split

    root = write_voc_split(
        ShapesDataset(16, image_size=64, seed=1),
        tmp_path / "voc",
        "trainval",
        SHAPES_CLASSES,
    )
    cfg = tiny_cfg(
        dataset="voc",
        voc_roots=(str(root),),
        class_names=SHAPES_CLASSES,
        val_root="",
        checkpoint_every=100,
    )
    return root, cfg


def test_a_bad_image_mid_run_names_the_file_and_keeps_the_iterations_done(
    tmp_path, capsys
):
    root, cfg = _voc_run_cfg(tmp_path)
    ids = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    # read by iteration 3
    index = ResumableBatchSampler(len(ids), cfg.batch_size, cfg.seed).batch(2)[0][0]
    image_file = root / "JPEGImages" / f"{ids[index]}.jpg"
    good = image_file.read_bytes()
    image_file.write_bytes(good[:200])  # a JPEG cut short
    with pytest.raises(ValueError, match=rf"{ids[index]}\.jpg"):
        train(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2
    assert "checkpoint written at iteration 2" in capsys.readouterr().err
    # fixed: resume, and the run is the one never interrupted
    image_file.write_bytes(good)
    train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")
    ref, got = final_params(tmp_path / "straight"), final_params(tmp_path / "run")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from ssd_tutorial.train import main

    common = ["--output-dir", str(tmp_path), "--no-progress"]
    for argv, message in [
        (["--config", "nope"], "error: unknown config 'nope'"),
        (["--set", "lr=nan"], "error: lr must be a finite number, got nan"),
        (["--set", "eval_every=-1"], "error: eval_every must be >= 0, got -1"),
        (["--resume"], "error: --resume: no checkpoint"),
    ]:
        assert main([*common, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="lr must be a finite number"):
        main([*common, "--set", "lr=nan", "--debug"])


def test_cli_error_in_a_subprocess_is_one_line_without_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "ssd_tutorial.train",
        "--output-dir",
        str(tmp_path),
        "--set",
        "lr=inf",
    ]
    result = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == "error: lr must be a finite number, got inf\n"


def test_train_re_exports_the_training_layer():
    """Chapters and benchmarks import these from ssd_tutorial.train; they live in the L4
    modules."""
    from ssd_tutorial import optim, recipes, rundir, sampling, train, trainer, validate

    homes = {
        sampling: ("ResumableBatchSampler", "SeededItems"),
        optim: ("lr_factor", "build_scheduler", "build_optimizer", "parameter_groups"),
        recipes: ("build_model", "build_datasets", "class_names_for"),
        rundir: ("run_files",),
        trainer: ("Trainer", "compute_loss"),
        validate: ("evaluate_model",),
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(train, name) is getattr(module, name), name
    assert train._collate_to_flat is sampling.collate_to_flat
