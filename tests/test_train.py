"""Training contracts: the smoke recipe runs end to end, a killed run resumes exactly, DDP agrees with one process."""
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from personseg.checkpoint import load_checkpoint
from personseg.cli import main
from personseg.config import load_config
from personseg.data import build_val_datasets
from personseg.train import Schedule, TrainState, evaluate, rng_state, set_rng_state, train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def smoke(data_dir, *overrides):
    return load_config(SMOKE, [f"data.root={data_dir}", *overrides])


def test_smoke_recipe_end_to_end(data_dir, tmp_path):
    assert main(["train", str(SMOKE), "--out", str(tmp_path), "--set", f"data.root={data_dir}"]) == 0
    for name in ("best.pt", "last.pt"):
        model, info = load_checkpoint(tmp_path / name)
        assert info["arch"] == "unet_mobilenet_v2" and info["model_kwargs"] == {"alpha": 0.35}
        assert info["input_size"] == [160, 90] and info["meta"]["config"]["max_steps"] == 20
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 90, 160)).shape == (1, 1, 90, 160)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)  # resumable state in plain data
    assert set(ckpt["extra"]) >= {"optimizer", "scaler", "state", "rng"} and ckpt["extra"]["state"]["step"] == 20
    log, metrics = read_jsonl(tmp_path / "log.jsonl"), read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, 21)) and all(math.isfinite(r["loss"]) for r in log)
    assert [r["step"] for r in metrics] == [5, 10, 15, 20]
    assert set(metrics[-1]["metrics"]) == {"portraits", "ccp", "hsd", "composites", "pooled"}
    best = max(m["metrics"]["pooled"]["iou"] for m in metrics)
    assert load_checkpoint(tmp_path / "best.pt")[1]["meta"]["metrics"]["pooled"]["iou"] == best
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_time_budget_and_portrait_batches(data_dir, tmp_path):
    cfg = smoke(data_dir, "max_steps=1000", "time_budget=0.001", "data.tall_share=0.5", "tensorboard=false")
    train(cfg, tmp_path)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert metrics[-1]["step"] < 1000 and metrics[-1]["train_seconds"] >= 0.06  # stopped by the clock
    assert set(metrics[-1]["metrics"]) == {"portraits", "ccp", "hsd", "composites", "pooled"}


def test_recurrent_model_trains_on_clips_from_its_stateless_twin(data_dir, tmp_path):
    train(smoke(data_dir, "max_steps=2", "tensorboard=false"), tmp_path / "still")
    cfg = smoke(data_dir, "model.name=recurrent_unet_mobilenet_v2", "data.clip_length=3", "max_steps=3",
                "eval_every=3", "loss.boundary_weight=0.1", "tensorboard=false", "data.clip_jitter=0.3",
                "model.freeze_bn=true", f"model.init={tmp_path / 'still' / 'best.pt'}")
    train(cfg, tmp_path / "clips")
    log = read_jsonl(tmp_path / "clips" / "log.jsonl")
    assert len(log) == 3 and all(math.isfinite(r["boundary"]) and r["boundary"] != 0 for r in log)
    model, info = load_checkpoint(tmp_path / "clips" / "best.pt")
    assert info["arch"] == "recurrent_unet_mobilenet_v2"
    still = load_checkpoint(tmp_path / "still" / "best.pt")[0].state_dict()
    trained = model.state_dict()
    assert all(k in trained for k in still) and any(k.startswith("decoder.grus.") for k in trained)
    for name, value in still.items():  # freeze_bn: BatchNorm kept the statistics it came with
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(trained[name], value), name
    assert not torch.equal(trained["head.weight"], still["head.weight"])  # while the weights learned


def test_missing_files_fail_in_one_line(data_dir, tmp_path, capsys):
    assert main(["train", str(SMOKE), "--out", str(tmp_path), "--set", f"data.root={data_dir}",
                 "--set", "model.init=nope.pt"]) == 2
    err = capsys.readouterr().err
    assert "nope.pt: no such model file" in err and "Traceback" not in err


def test_killed_run_resumes_with_the_same_loss_curve(data_dir, tmp_path):
    # 8 steps per epoch: the kill at step 6 is mid-epoch, and not an evaluation step (eval_every 5).
    # The boundary loss stays off (boundary_step 0) while the plateau still lowers lr: OpenCV's precise
    # distance transform behind losses.signed_distance_map differs in the last bits from call to call.
    common = ["schedule.patience=1", "schedule.min_delta=1.0", "loss.boundary_step=0"]  # plateau at step 10
    full = train(smoke(data_dir, "max_steps=12", *common), tmp_path / "full")
    train(smoke(data_dir, "max_steps=6", *common), tmp_path / "killed")
    resumed = train(smoke(data_dir, "max_steps=12", *common), tmp_path / "killed", resume=True)
    a, b = read_jsonl(tmp_path / "full" / "log.jsonl"), read_jsonl(tmp_path / "killed" / "log.jsonl")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert np.allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=0, atol=1e-6)
    assert [r["lr"] for r in b] == [1e-3] * 10 + [3e-4] * 2  # the plateau state was restored too
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    for (name, p), q in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name
    assert full["metrics"] == resumed["metrics"]


def test_plateau_schedule():
    cfg = load_config(None, ["schedule.patience=2", "loss.boundary_step=0.4", "loss.boundary_max=0.5"])
    schedule, state = Schedule(cfg, total_steps=100), TrainState()
    firsts = []
    for iou in (0.5, 0.6, 0.6, 0.59):
        assert schedule.lr(state) == 1e-3
        schedule.update(state, end_of_epoch=True)  # no plateau yet: the boundary loss stays off
        firsts.append(schedule.update(state, end_of_epoch=False, iou=iou))
    assert firsts == [False, False, False, True] and state.boundary_weight == 0
    assert state.plateaued and schedule.lr(state) == 3e-4
    for expected in (0.4, 0.5):  # the boundary-loss ramp at the end of every epoch, up to boundary_max
        schedule.update(state, end_of_epoch=True)
        assert state.boundary_weight == pytest.approx(expected)
    cfg = load_config(None, ["schedule.patience=1", "schedule.scheduler=reduce_on_plateau", "schedule.factor=0.5"])
    schedule, state = Schedule(cfg, 100), TrainState(best_iou=0.6)
    schedule.update(state, False, 0.5)
    schedule.update(state, False, 0.5)
    assert schedule.lr(state) == pytest.approx(2.5e-4)
    schedule = Schedule(load_config(None, ["schedule.scheduler=cosine", "optim.warmup_steps=10"]), 100)
    assert schedule.lr(TrainState(step=0)) == pytest.approx(1e-4)
    assert schedule.lr(TrainState(step=100)) == pytest.approx(schedule.cfg.schedule.min_lr)


def test_train_state_keeps_the_checkpoint_keys():
    saved = {"step": 7, "best_iou": 0.5, "bad_evals": 1, "plateaued": True, "lr_scale": 0.5,
             "boundary_weight": 0.02, "best_saved_iou": 0.55}  # extra["state"] as last.pt has always held it
    state = TrainState.from_dict(saved)
    assert state.step == 7 and state.plateaued and asdict(state) == saved
    assert TrainState.from_dict({"step": 3, "from_a_newer_version": 1}).step == 3


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    np.random.seed(1)
    torch.manual_seed(1)
    state = rng_state()
    expected = (np.random.rand(3), torch.rand(3), __import__("random").random())
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    again = (np.random.rand(3), torch.rand(3), __import__("random").random())
    assert np.array_equal(expected[0], again[0]) and torch.equal(expected[1], again[1]) and expected[2] == again[2]


DDP_WORKER = """
import os, sys, torch
from personseg.config import load_config
from personseg.train import train
cfg = load_config(sys.argv[1], sys.argv[3:])
result = train(cfg, sys.argv[2])
torch.save(result["model"].state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


def test_ddp_two_cpu_ranks_agree_with_one_process(data_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    overrides = [f"data.root={data_dir}", "max_steps=4", "eval_every=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(SMOKE), str(tmp_path / "run"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f"{name} differs between ranks"  # weights and BN buffers
    # the final evaluation, sharded over 2 ranks, equals one process evaluating the saved model
    ddp_metrics = read_jsonl(run / "metrics.jsonl")[-1]["metrics"]
    model, _ = load_checkpoint(run / "last.pt")
    model = model.to(memory_format=torch.channels_last)
    cfg = load_config(SMOKE, overrides)
    loaders = {name: DataLoader(ds, batch_size=3) for name, ds in build_val_datasets(cfg).items()}
    single = evaluate(model, loaders, memory_format=torch.channels_last)
    assert single.keys() == ddp_metrics.keys()
    for source in single:
        for k, v in single[source].items():
            assert v == pytest.approx(ddp_metrics[source][k], abs=1e-6, nan_ok=True), (source, k)


# ------------------------------------------------------------------------- hostile inputs (issue 13)

def tiny_run(tmp_path, kwargs=None):
    """A run folder with a resumable last.pt of a tiny model (no data needed) and its model."""
    from personseg.checkpoint import save_checkpoint
    from personseg.models import create_model

    kwargs = kwargs or {"alpha": 0.35}
    model = create_model("unet_mobilenet_v2", **kwargs)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    extra = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": [rng_state()],
             "state": {"step": 4}, "world_size": 1}
    save_checkpoint(tmp_path / "last.pt", model, arch="unet_mobilenet_v2", model_kwargs=kwargs, extra=extra)
    return model, optimizer, scaler


def test_resume_drops_a_torn_log_line_and_refuses_other_model_settings(tmp_path):
    from personseg.checkpoint import CheckpointError
    from personseg.models import create_model
    from personseg.train import load_training_state

    model, optimizer, scaler = tiny_run(tmp_path)
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (2, 4)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # killed mid-write
    assert load_training_state(tmp_path / "last.pt", model, optimizer, scaler, 0, True).step == 4
    assert [r["step"] for r in read_jsonl(tmp_path / "log.jsonl")] == [2, 4]
    other = create_model("unet_mobilenet_v2", alpha=0.5)
    with pytest.raises(CheckpointError, match="other model settings") as error:
        load_training_state(tmp_path / "last.pt", other, torch.optim.AdamW(other.parameters()), scaler, 0, True)
    assert "last.pt" in str(error.value)


def test_ctrl_c_in_train_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import personseg.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "--resume" in err


def test_train_help_has_examples_and_the_shared_output_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "-o RUNDIR, --output RUNDIR, --out RUNDIR" in text
    for line in text.split("examples:")[1].splitlines():
        if line.strip().startswith("personseg train"):
            assert (REPO / line.split()[2]).is_file(), line  # every example names a recipe that exists


def test_multitask_model_trains_its_heads_from_the_unet_it_extends(data_dir, tmp_path):
    train(smoke(data_dir, "max_steps=2", "tensorboard=false"), tmp_path / "still")
    cfg = smoke(data_dir, "model.name=multitask_unet_mobilenet_v2", "max_steps=3", "eval_every=3",
                "tensorboard=false", f"model.init={tmp_path / 'still' / 'best.pt'}",
                "data.sources.coco={kind: coco, path: coco, limit: 8}", "data.sources.composites=null")
    train(cfg, tmp_path / "multi")
    log = read_jsonl(tmp_path / "multi" / "log.jsonl")
    assert len(log) == 3 and all(math.isfinite(r["parts"]) and math.isfinite(r["keypoints"]) for r in log)
    model, info = load_checkpoint(tmp_path / "multi" / "best.pt")
    assert info["arch"] == "multitask_unet_mobilenet_v2"
    with torch.no_grad():
        logits, parts, heatmaps = model(torch.zeros(1, 3, 90, 160))
    assert parts.shape == (1, 6, 90, 160) and heatmaps.shape == (1, 17, 23, 40)
    assert set(read_jsonl(tmp_path / "multi" / "metrics.jsonl")[-1]["metrics"]) >= {"ccp", "coco", "pooled"}


def test_samples_carry_part_and_keypoint_targets_only_where_known(data_dir):
    from personseg.data import build_source
    from personseg.parts import IGNORE

    cfg = smoke(data_dir, "data.sources.coco={kind: coco, path: coco, limit: 8}")
    by_name = {s.name: s for s in cfg.data.sources}
    ccp = build_source(by_name["ccp"], cfg, "train", heads=True)[(0, 1)]
    assert set(ccp["labels"].unique().tolist()) - {IGNORE} <= set(range(6)) and (ccp["labels"] != IGNORE).any()
    assert ccp["heatmap_weight"].sum() == 0  # a person with unknown joints: no heatmap loss
    coco = build_source(by_name["coco"], cfg, "val", heads=True)
    sample = next(coco[i] for i in range(len(coco)) if coco[i]["heatmaps"].amax() > 0.9)
    assert (sample["labels"] == IGNORE).all() and sample["heatmap_weight"].mean() > 0.5
    assert sample["heatmaps"].shape == (17, 23, 40)
    portraits = build_source(by_name["portraits"], cfg, "val", heads=True)[0]
    assert portraits["heatmaps"].sum() == 0 and portraits["heatmap_weight"].sum() == 0
