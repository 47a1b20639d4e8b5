"""The dance task inside the framework: config and the lab's flag names, the shared schedules
against the lab's formulas, training, evaluation, checkpoints, command lines, bench."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_schedules import fu_frange_cycle_linear

from cvae import checkpoint, tasks
from cvae.__main__ import main
from cvae.config import LAB_NAMES, field_names, from_dict, preset
from cvae.evaluate import evaluate, evaluate_checkpoint
from cvae.schedules import kl_beta, teacher_forcing_ratio
from cvae.tasks.dance import synth
from cvae.tasks.dance.task import TrainingData, ValSequence
from cvae.train import Trainer, fit, learning_rate

TINY = dict(dancers=2, train_len=32, val_len=40, test=2, test_len=20)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dance_root(tmp_path_factory) -> Path:
    """2 dancers x 32 training frames, a 40-frame val sequence, 2 test sequences of 20."""
    root = tmp_path_factory.mktemp("dance") / "data"
    synth.write_dataset(root, **TINY, seed=1, progress=False)
    return root


def tiny(root: Path, **overrides):
    return preset("dance-tiny", data=str(root), **overrides)


@pytest.fixture(scope="module")
def tiny_run(dance_root, tmp_path_factory):
    """`cvae train --preset dance-tiny` on the tiny data: (output folder, exit code)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = main(["train", "--preset", "dance-tiny", "--data", str(dance_root), "--out", str(out)])
    return out, code


# ------------------------------------------------------------------ config and lab names

@pytest.mark.parametrize("lab, ours", sorted(LAB_NAMES.items()))
def test_every_lab_name_maps_to_a_config_field(lab, ours):
    assert ours in field_names() and lab not in field_names()
    with pytest.raises(ValueError) as err:
        from_dict({lab: 1})
    assert str(err.value) == (f"unknown config key {lab!r}: {lab!r} is the lab's name; here it "
                              f"is {ours!r}" + (" (0 = off, else the number of epochs)"
                                                if lab == "fast_train" else ""))


@pytest.mark.parametrize("argv", [["tfr_sde=3"], ["--tfr_sde", "3"], ["--kl_anneal_type=None"]])
def test_lab_flags_on_the_command_line_are_one_line_errors(dance_root, argv, capsys):
    assert main(["train", "--preset", "dance-tiny", "--data", str(dance_root), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = argv[0].lstrip("-").split("=")[0]
    assert len(err) == 1 and f"here it is {LAB_NAMES[name]!r}" in err[0]


def test_lab_flags_in_a_space_file_name_the_field(tmp_path):
    from search.space import SpaceError, load_space

    path = tmp_path / "space.yaml"
    path.write_text("num_samples: 2\nbase: {preset: dance-tiny}\n"
                    "params:\n  tfr_sde: {type: int, low: 0, high: 1}\n")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert "params.tfr_sde" in str(err.value) and "'tfr_start_decay_epoch'" in str(err.value)
    assert "\n" not in str(err.value)


def test_presets_pick_the_task_and_validate_its_dims():
    assert preset("cpu").task == "bair" and preset("dance-cpu").task == "dance"
    with pytest.raises(ValueError, match="z_dim=6: expected a multiple of 4"):
        preset("dance-tiny", z_dim=6)
    with pytest.raises(ValueError, match="epoch_size=0"):
        preset("cpu", epoch_size=0)  # a full pass exists only for the dance task
    assert preset("dance-lab").epoch_size == 0


def test_dance_lab_preset_builds_the_templates_modules():
    model = tasks.get("dance").build_model(preset("dance-lab"))
    assert sum(p.numel() for p in model.parameters()) == 1_585_620  # tests/test_dance.py


# ------------------------------------------------------------------ schedules (the lab's)

def lab_teacher_forcing(epochs: int, tfr: float, sde: int, d_step: float) -> list[float]:
    """The dance lab's training_stage: train an epoch with tfr, then current_epoch += 1 and
    teacher_forcing_ratio_update (from epoch tfr_sde on: tfr - tfr_d_step, floor 0)."""
    out, current = [], 0
    for _ in range(epochs):
        out.append(tfr)
        current += 1
        if current >= sde:
            tfr = max(0.0, tfr - d_step)
    return out


@pytest.mark.parametrize("sde, d_step", [(10, 0.1), (1, 0.3), (3, 0.25)])
def test_teacher_forcing_is_the_dance_labs(sde, d_step):
    cfg = preset("dance-lab", tfr_start_decay_epoch=sde, tfr_decay_step=d_step)
    ours = [teacher_forcing_ratio(cfg, e) for e in range(cfg.epochs)]
    assert ours == pytest.approx(lab_teacher_forcing(cfg.epochs, 1.0, sde, d_step), abs=1e-9)


def test_the_dance_labs_tfr_sde_0_is_its_1():
    """The lab decays after each epoch, so its epoch 0 always has the initial ratio: its
    tfr_sde 0 and 1 are one schedule, tfr_start_decay_epoch=1 here (0 here decays from the
    first epoch, as the BAIR lab)."""
    assert lab_teacher_forcing(20, 1.0, 0, 0.1) == lab_teacher_forcing(20, 1.0, 1, 0.1)
    assert teacher_forcing_ratio(preset("dance-lab", tfr_start_decay_epoch=0), 0) == 0.9


@pytest.mark.parametrize("mode, cycles", [("cyclical", 10), ("monotonic", 1), ("none", 1)])
def test_kl_annealing_is_the_dance_labs(mode, cycles):
    """Cyclical: frange_cycle_linear(num_epoch, 0, 1, kl_anneal_cycle, kl_anneal_ratio) per
    epoch; Monotonic: one cycle; None: beta 1."""
    cfg = preset("dance-lab", kl_anneal=mode)
    ours = [kl_beta(cfg, e) for e in range(cfg.epochs)]
    lab = (fu_frange_cycle_linear(70, 0.0, 1.0, cycles, 1.0) if mode != "none" else [1.0] * 70)
    assert ours == pytest.approx(list(lab))


def test_learning_rate_is_multisteplr():
    cfg = preset("dance-lab")
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.1)
    for e in range(8):
        assert learning_rate(cfg, e) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert learning_rate(preset("cpu"), 7) == preset("cpu").lr  # bair: constant


# ------------------------------------------------------------------ training data

def test_epochs_draw_each_clip_once_and_fast_train_uses_a_share(dance_root):
    data = TrainingData(tiny(dance_root, epoch_size=0, batch_size=3, fast_train_epochs=1,
                             fast_partial=0.5), dance_root)
    rng = np.random.default_rng(0)
    assert data.clips_in_epoch(0) == 8 and data.clips_in_epoch(1) == 16  # 64 frames / 4
    assert data.steps(0, rng) == 2  # 8 clips // 3
    assert data.steps(1, rng) == 5
    seen = np.concatenate([data.sample(rng, 1, s)[2] for s in range(5)])
    assert len(set(seen.tolist())) == 15 and seen.max() < 16
    frames, labels, idx = data.sample(rng, 1, 0)
    assert frames.shape == labels.shape == (3, 4, 3, 32, 64)
    assert {data.teacher_forcing(rng, 0.5) for _ in range(50)} == {True, False}  # one bool


def test_validation_needs_val_len_frames(dance_root):
    assert ValSequence(dance_root, 40).seq_len == 40
    with pytest.raises(ValueError, match="val_img: 40 frames, the validation protocol needs 41"):
        ValSequence(dance_root, 41)


# ------------------------------------------------------------------ training and evaluation

def test_fit_reports_the_630_frame_protocol_on_val(dance_root):
    cfg = tiny(dance_root, val_len=16)
    rows, states = [], []
    fit(cfg, lambda row, d: (rows.append(row), states.append(checkpoint.load(d))))
    assert [r["epoch"] for r in rows] == [1, 2] and not any(r["diverged"] for r in rows)
    assert [r["tfr"] for r in rows] == [1.0, 0.5]
    model = tasks.get("dance").build_model(cfg)
    model.load_state_dict(states[1]["model"])
    score = evaluate(model, ValSequence(dance_root, 16), 1, 15, seed=cfg.seed)
    assert rows[1]["val_psnr"] == pytest.approx(score["psnr"], rel=1e-6)
    assert rows[1]["val_baseline_psnr"] == pytest.approx(score["baseline_psnr"], rel=1e-6)
    assert "cond_stats" not in states[0] and states[0]["config"]["task"] == "dance"


def test_resume_from_checkpoint_is_exact(dance_root):
    cfg = tiny(dance_root, epochs=3, epoch_size=0, batch_size=4)
    straight, states = [], []
    fit(cfg, lambda row, d: (straight.append(row), states.append(checkpoint.load(d))))
    resumed = []
    fit(cfg, lambda row, d: resumed.append(row), state=states[0])
    keys = ("loss", "mse", "kld", "val_psnr", "val_ssim", "tfr", "beta")
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(straight[1:], resumed):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_training_lowers_the_loss_on_one_batch(dance_root):
    trainer = Trainer(tiny(dance_root, lr=0.004, z_dim=4))
    x, c = trainer.train_set.batch(np.arange(2))
    losses = [trainer.train_step(x, c, True, beta=0.0)["mse"] for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_shuffled_poses_of_one_sequence_are_its_own_shifted(dance_root):
    torch.manual_seed(0)
    model = tasks.get("dance").build_model(tiny(dance_root))
    val = ValSequence(dance_root, 12)
    calls = []
    real = model.predict

    def spy(x_ctx, cond, n_future, **kw):
        calls.append(cond.clone())
        return real(x_ctx, cond, n_future, **kw)

    model.predict = spy
    plain = evaluate(model, val, 1, 11, seed=3)
    shuffled = evaluate(model, val, 1, 11, seed=3, shuffle_conditions=True)
    assert torch.equal(calls[1], calls[0].roll(6, dims=1))
    assert shuffled["baseline_psnr"] == plain["baseline_psnr"]
    assert shuffled["psnr"] != plain["psnr"]


def test_z_from_the_posterior_reaches_the_generator(dance_root):
    torch.manual_seed(0)
    model = tasks.get("dance").build_model(tiny(dance_root)).eval()
    val = ValSequence(dance_root, 12)
    runs = [evaluate(model, val, 1, 11, seed=s, z=z) for z in ("prior", "posterior")
            for s in (0, 1)]
    assert runs[0]["psnr"] != runs[1]["psnr"]  # z ~ N(0, I) differs with the seed
    assert runs[2]["z"] == "posterior" and math.isfinite(runs[2]["psnr"])


def test_latents_give_the_training_kl_and_active_units_per_channel(dance_root):
    """model.latents on true frames and poses is the teacher-forced pass's posterior: its KL
    from N(0, I), summed and divided by the batch, is the step's kld; evaluate(latent=True)
    reports it per step, per channel of the spatial latent, and the active channels."""
    from cvae.model import gaussian_kl

    torch.manual_seed(0)
    model = tasks.get("dance").build_model(tiny(dance_root, z_dim=4)).eval()
    frames, labels = torch.rand(2, 5, 3, 32, 64), torch.rand(2, 5, 3, 32, 64)
    with torch.no_grad():
        _, kld, _ = model(frames, labels, True)
        mu, logvar, mu_p, logvar_p = model.latents(frames, labels, chunk=3)
    assert mu.shape == (4, 2, 4, 32, 64) and not mu_p.any() and not logvar_p.any()
    assert gaussian_kl(mu, logvar, mu_p, logvar_p).sum() / 2 == pytest.approx(kld.item(),
                                                                              rel=1e-5)
    # evaluate: KL summed over each channel's positions; a channel's posterior mean varies
    # over (step, position) inputs
    val = ValSequence(dance_root, 12)
    r = evaluate(model, val, 1, 11, latent=True)
    x, poses = val.batch(np.arange(1), np.zeros(1, int), seq_len=12)
    mu, logvar, mu_p, logvar_p = model.latents(x, poses)
    per_channel = gaussian_kl(mu, logvar, mu_p, logvar_p).sum((3, 4)).mean((0, 1))  # (4,)
    assert r["kl_per_dim"] == pytest.approx(per_channel.tolist(), rel=1e-4)
    assert len(r["kl_per_step"]) == 11 and r["kl"] == pytest.approx(per_channel.sum().item(),
                                                                    rel=1e-4)
    variance = mu.permute(2, 0, 1, 3, 4).reshape(4, -1).var(1, correction=0)
    assert r["posterior_mean_variance"] == pytest.approx(variance.tolist(), rel=1e-4)


# ------------------------------------------------------------------ command lines

def test_train_cli_writes_every_artifact(tiny_run):
    out, code = tiny_run
    assert code == 0
    for name in ("metrics.csv", "curves.png", "grid.png", "psnr_per_frame.png", "test_0.gif",
                 "test_1.gif", "submission.csv", "test_metrics.json", "config.json"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    result = json.loads((out / "test_metrics.json").read_text())
    assert (result["task"], result["n_past"], result["n_future"]) == ("dance", 1, 19)
    assert len(result["psnr_per_frame"]) == 19 and math.isfinite(result["psnr"])
    rows = (out / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 20 and rows[0].startswith("id,0,1,") and len(rows[1].split(",")) \
        == 1 + 3 * 32 * 64
    assert result["submission_rows"] == 40


def test_evaluate_cli_json_keys_and_shuffled_poses(tiny_run, capsys):
    ckpt = str(tiny_run[0] / "checkpoint")
    runs = {}
    for shuffle in (False, True):
        argv = ["evaluate", "--checkpoint", ckpt, "--split", "validate", "--json"]
        assert main(argv + (["--shuffle-conditions"] if shuffle else [])) == 0
        runs[shuffle] = json.loads(capsys.readouterr().out)
    r = runs[False]
    assert {"psnr", "ssim", "baseline_psnr", "psnr_per_frame", "ssim_per_frame",
            "baseline_psnr_per_frame"} <= set(r)
    assert (r["n_past"], r["n_future"], r["split"]) == (1, 11, "validate")  # val_len 12
    assert len(r["psnr_per_frame"]) == len(r["baseline_psnr_per_frame"]) == 11
    assert runs[True]["baseline_psnr"] == r["baseline_psnr"] and runs[True]["psnr"] != r["psnr"]


def test_evaluate_test_split_without_ground_truth_still_writes_outputs(tiny_run, dance_root,
                                                                     tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dance_root, data)
    shutil.rmtree(data / "test" / "test_truth")  # the lab's test split: first frames only
    r = evaluate_checkpoint(tiny_run[0] / "checkpoint", data=str(data), split="test")
    assert not r["ground_truth_available"] and math.isnan(r["psnr"])
    media = tiny_run[0] / "test"  # beside the checkpoint by default
    assert sorted(p.name for p in media.iterdir()) == ["grid.png", "submission.csv",
                                                       "test_0.gif", "test_1.gif"]
    with_truth = evaluate_checkpoint(tiny_run[0] / "checkpoint", split="test", media_dir=tmp_path)
    rows = np.loadtxt(media / "submission.csv", delimiter=",", skiprows=1)
    again = np.loadtxt(tmp_path / "submission.csv", delimiter=",", skiprows=1)
    assert np.array_equal(rows, again)  # the same generated frames, seed 0 both times
    assert math.isfinite(with_truth["psnr"])
    # z from the posterior has seen the frames it predicts: no submission or GIFs from it
    posterior = evaluate_checkpoint(tiny_run[0] / "checkpoint", split="test", z="posterior")
    assert math.isfinite(posterior["psnr"]) and "submission_rows" not in posterior
    assert np.array_equal(np.loadtxt(media / "submission.csv", delimiter=",", skiprows=1), rows)


def test_bad_dance_data_is_one_line_and_exit_2(dance_root, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dance_root, data)
    (data / "train" / "train_label" / "frame9.png").unlink()
    assert main(["train", "--preset", "dance-tiny", "--data", str(data), "--out",
                 str(tmp_path / "run")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "train_label/frame9.png: missing label" in errors[0]
    assert main(["check-data", "--task", "dance", str(data)]) == 1
    assert "train_label/frame9.png: missing label" in capsys.readouterr().out


def test_synth_and_check_data_commands_take_the_task(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["synth", "--task", "dance", "--out", str(out), "--dancers", "1",
                 "--train-len", "16", "--val-len", "630", "--test-sequences", "1",
                 "--test-len", "3"]) == 0
    assert main(["check-data", "--task", "dance", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "ok" and "630 frames with labels" in lines[2]
    assert json.loads((out / "SYNTH.json").read_text())["sizes"]["test_len"] == 3


def test_bench_times_the_dance_step_against_the_labs_loop(capsys):
    assert main(["bench", "--preset", "dance-tiny", "--steps", "1", "--warmup", "0",
                 "--threads", "1", "--device", "cpu", "--compare", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = tasks.get("dance").build_model(preset("dance-tiny"))
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert set(result["runs"]) == {"project", "reference"} and result["task"] == "dance"
    assert (result["batch"], result["seq_len"]) == (2, 4)  # the preset's batch and clip
    assert result["speedup_vs_reference"] > 0


def test_prepare_data_decodes_once_and_returns_the_root(dance_root):
    root = tasks.prepare_data(tiny(dance_root), quiet=True)
    assert root == str(dance_root)
    with pytest.raises(ValueError, match="val_img: 40 frames"):
        tasks.prepare_data(tiny(dance_root, val_len=630), quiet=True)


def test_bair_checkpoints_without_a_task_load_as_bair(synth_root, tmp_path):
    cfg = preset("tiny", data=str(synth_root), epochs=1, epoch_size=1)
    states = []
    fit(cfg, lambda row, d: states.append(checkpoint.load(d)))
    state = states[0]
    new = set(field_names()) - {"task", "pose_dim", "fusion_dim", "clip_len", "val_len",
                                "partial", "fast_partial", "fast_train_epochs", "chunk",
                                "lr_milestones", "lr_gamma"}
    state["config"] = {k: v for k, v in state["config"].items() if k in new}  # an old one
    checkpoint.save(tmp_path, state)
    model, loaded, stats = checkpoint.load_model(tmp_path)
    assert loaded.task == "bair" and stats is not None
    assert type(model).__name__ == "SVG"


@pytest.mark.parametrize("clamp", [False, True])
def test_clamp_feedback_bounds_the_frames_fed_back(clamp):
    from cvae.tasks.dance.model import DanceVAE

    torch.manual_seed(0)
    model = DanceVAE(16, 8, 4, 16, clamp_feedback=clamp)
    with torch.no_grad():
        model.Generator[-1].bias.fill_(5.0)  # every generated value far above 1
    inputs = []
    model.frame_transformation.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    out = model.generate(torch.rand(1, 3, 8, 16), torch.rand(1, 4, 3, 8, 16))
    assert out[:, 1:].min() > 1  # the generated frames themselves stay raw, as in the lab
    fed = torch.stack([x.max() for x in inputs[1:]])  # the inputs after the given frame
    assert (fed.max() <= 1.0) == clamp
    frames, labels = torch.rand(2, 4, 3, 8, 16), torch.rand(2, 4, 3, 8, 16)
    mse, kld, _ = model(frames, labels, False)  # free running: clamped inputs, finite loss
    assert math.isfinite(mse.item()) and math.isfinite(kld.item())
