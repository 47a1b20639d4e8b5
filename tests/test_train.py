import math
import platform

import numpy as np
import pytest
import torch

from cvae import checkpoint
from cvae.__main__ import main
from cvae.config import preset
from cvae.data import BairDataset, CondStats
from cvae.evaluate import evaluate
from cvae.model import SVG
from cvae.train import Trainer, fit, reuse_freed_memory


def tiny(root, **kw):
    return preset("tiny", data=str(root), **kw)


def test_tiny_fit_reports_every_epoch_with_the_checkpoints_scores(synth_root):
    """Each row's val_psnr is the score of that epoch's checkpointed weights (not an assertion
    on where training lands, which differs between CPUs)."""
    rows, dirs = [], []

    def report(row, ckpt_dir):
        rows.append(row)
        dirs.append(checkpoint.load(ckpt_dir))

    cfg = tiny(synth_root, epoch_size=10, lr=0.004)
    fit(cfg, report)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "mse", "kld", "beta", "tfr", "val_psnr", "val_ssim", "val_psnr_best",
                "diverged", "epoch_time_s"} <= set(r)
        assert math.isfinite(r["loss"]) and not r["diverged"]
    assert rows[1]["val_psnr_best"] == max(r["val_psnr"] for r in rows)
    assert dirs[1]["epoch"] == 2 and len(dirs[1]["history"]) == 2
    weights = [d["model"] for d in dirs]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    val = BairDataset(synth_root, "validate", cfg.n_past + cfg.eval_n_future,
                      CondStats.from_dict(dirs[0]["cond_stats"]))
    for row, state in zip(rows, dirs):
        model = SVG(cfg)
        model.load_state_dict(state["model"])
        score = evaluate(model, val, cfg.n_past, cfg.eval_n_future,
                         max_sequences=cfg.val_sequences, seed=cfg.seed)
        assert row["val_psnr"] == pytest.approx(score["psnr"], rel=1e-5)


def test_train_steps_lower_the_loss_on_one_batch(synth_root):
    """Training learns: 20 steps on one fixed batch more than halve its reconstruction loss
    (a margin far wider than the differences between CPUs' float summation orders)."""
    trainer = Trainer(tiny(synth_root, lr=0.004))
    idx, starts = np.arange(4), np.zeros(4, int)
    x, c = trainer.train_set.batch(idx, starts)
    tf = torch.ones(4, dtype=torch.bool)
    losses = [trainer.train_step(x, c, tf, beta=0.0)["mse"] for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_resume_from_checkpoint_is_exact(synth_root):
    cfg = tiny(synth_root, epochs=3, tfr_start_decay_epoch=1)  # mixed forced / free epochs
    straight, states = [], []
    fit(cfg, lambda row, d: (straight.append(row), states.append(checkpoint.load(d))))
    resumed = []
    fit(cfg, lambda row, d: resumed.append(row), state=states[0])
    keys = ("loss", "mse", "kld", "val_psnr", "val_ssim", "tfr", "beta")
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(straight[1:], resumed):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_divergence_ends_the_run_with_a_finite_worst_case(synth_root, monkeypatch):
    from cvae import train

    calls = {"n": 0}
    real_step = train.Trainer.train_step

    def exploding(self, x, c, tf, beta):  # the loss turns non-finite in epoch 2
        calls["n"] += 1
        if self.epochs_done >= 1:
            return {"loss": math.inf, "mse": math.inf, "kld": math.inf}
        return real_step(self, x, c, tf, beta)

    monkeypatch.setattr(train.Trainer, "train_step", exploding)
    rows = []
    fit(tiny(synth_root, epochs=4), lambda row, d: rows.append(row))
    assert [r["diverged"] for r in rows] == [False, True]
    assert rows[1]["val_psnr"] == 0.0 and rows[1]["val_psnr_best"] == rows[0]["val_psnr"]


def test_real_optimizer_divergence_is_detected(synth_root):
    rows = []
    fit(tiny(synth_root, epochs=3, lr=1e4, epoch_size=6), lambda row, d: rows.append(row))
    assert rows[-1]["diverged"] and math.isfinite(rows[-1]["val_psnr"])


def test_train_cli_writes_every_artifact(synth_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(synth_root), "--out", str(out),
                 "epochs=1", "lr=0.003"]) == 0
    for name in ("metrics.csv", "curves.png", "prediction.gif", "grid.png", "psnr_per_frame.png",
                 "test_metrics.json", "config.json"):
        assert (out / name).stat().st_size > 0, name
    state = checkpoint.load(out / "checkpoint")
    assert state["config"]["lr"] == 0.003 and state["epoch"] == 1


def test_train_cli_rejects_bad_overrides(synth_root, capsys):
    assert main(["train", "--preset", "tiny", "--data", str(synth_root), "lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: unknown config key 'lrr' (did you mean 'lr'?)"
    assert main(["train", "--preset", "tiny", "--data", str(synth_root), "kl_anneal=sometimes"]) == 2
    assert "kl_anneal='sometimes'" in capsys.readouterr().err


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reuse_freed_memory_is_accepted_by_glibc():
    """Both mallopt calls succeed (glibc returns 0 for a parameter or value it rejects)."""
    assert reuse_freed_memory() is True


def test_the_logged_beta_is_what_the_epochs_steps_used(synth_root):
    """A cyclical per-step schedule restarting mid-epoch (3 cycles over 2 epochs of 6 steps:
    restarts at steps 4 and 8): each row logs the mean and the last beta its steps used, and
    beta_curve gives the schedule per step, restarts included."""
    from cvae.schedules import beta_curve, kl_beta

    cfg = tiny(synth_root, epochs=2, epoch_size=6, kl_anneal="cyclical", kl_anneal_cycle=3,
               kl_anneal_ratio=0.5, kl_anneal_unit="step", beta_max=1.0)
    x, beta = beta_curve(cfg)
    assert list(x) == [i / 6 for i in range(12)]
    assert list(beta) == [0, .5, 1, 1, 0, .5, 1, 1, 0, .5, 1, 1]
    assert list(beta) == [kl_beta(cfg, i // 6, i % 6) for i in range(12)]
    rows = fit(cfg, lambda row, d: None)
    assert [r["beta"] for r in rows] == [pytest.approx(0.5), pytest.approx(0.75)]
    assert [r["beta_last"] for r in rows] == [0.5, 1.0]
    epochs = tiny(synth_root, epochs=3, kl_anneal="monotonic", kl_anneal_ratio=0.5)
    x, beta = beta_curve(epochs)  # per epoch: Fu's ramp over 1.5 of 3 epochs
    assert list(x) == [0, 1, 2] and list(beta) == pytest.approx([0, 1e-3 / 1.5, 1e-3])
