"""Where the project follows SVG and the lab: initialisation, training window, SSIM variants,
z from the posterior and the latent statistics of `evaluate`."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from cvae.config import preset
from cvae.evaluate import evaluate
from cvae.metrics import ssim
from cvae.model import SVG, gaussian_kl
from cvae.train import Trainer


def test_svg_init_draws_weights_as_svgs_init_weights():
    torch.manual_seed(0)
    model = SVG(preset("cpu", init="svg"))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    w = torch.cat([m.weight.flatten() for m in convs])
    g = torch.cat([m.weight.flatten() for m in bns])
    assert w.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(m.bias is None or not m.bias.any() for m in convs + bns)
    assert g.mean().item() == pytest.approx(1.0, abs=0.005)
    assert g.std().item() == pytest.approx(0.02, rel=0.1)
    # LSTM cells keep PyTorch's U(-1/sqrt(h), 1/sqrt(h)), as in SVG
    cell = model.frame_predictor.lstm[0]
    bound = 1 / cell.hidden_size ** 0.5
    assert cell.weight_ih.abs().max().item() <= bound and cell.weight_ih.std().item() > 0.05
    default = SVG(preset("cpu"))
    assert default.encoder.c1[0][0].weight.std().item() > 0.05  # torch: kaiming-uniform


@pytest.mark.parametrize("window", ["first", "random"])
def test_training_window(synth_root, window):
    cfg = preset("tiny", data=str(synth_root), train_window=window, batch_size=16)
    trainer = Trainer(cfg)
    t = cfg.n_past + cfg.n_future
    seen = []
    for _ in range(4):
        x, _, idx = trainer._batch()
        full = torch.stack([torch.from_numpy(np.array(trainer.train_set.arrays.frames[i]))
                            for i in idx]).permute(0, 1, 4, 2, 3).float() / 255
        starts = [next(s for s in range(31 - t) if torch.equal(full[b, s:s + t], x[b]))
                  for b in range(len(idx))]
        seen += starts
    if window == "first":
        assert set(seen) == {0}
    else:
        assert len(set(seen)) > 3


def _skimage_compare_ssim(x, y):
    """skimage's compare_ssim on float images with its defaults (as SVG's eval_seq calls it):
    7x7 uniform filter, sample covariance, data range 2 (float dtype range), cropped by 3."""
    c1, c2, r, n = 0.01 ** 2 * 4, 0.03 ** 2 * 4, 3, 49
    f = lambda a: ndimage.uniform_filter(a, size=7)  # noqa: E731
    ux, uy = f(x), f(y)
    vx = n / (n - 1) * (f(x * x) - ux * ux)
    vy = n / (n - 1) * (f(y * y) - uy * uy)
    vxy = n / (n - 1) * (f(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s[r:-r, r:-r].mean()


def test_svg_ssim_equals_skimage_compare_ssim_per_channel_mean():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 2, 3, 64, 64, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b, kind="svg")
    for i in range(2):
        for t in range(2):
            ref = np.mean([_skimage_compare_ssim(a[i, t, c].numpy(), b[i, t, c].numpy())
                           for c in range(3)])
            assert ours[i, t].item() == pytest.approx(ref, rel=1e-9)
    assert not torch.allclose(ours, ssim(a, b))  # a different definition from finn's
    with pytest.raises(ValueError, match="kind"):
        ssim(a, b, kind="other")


class _KnownLatents(nn.Module):
    """A model whose posterior means are known: dimension 0 varies across sequences (active),
    dimension 1 is constant (inactive); predictions copy the last context frame, or the true
    frames when given them (so the posterior path is visible in the PSNR)."""

    def latents(self, x, cond=None):
        b, t = x.shape[:2]
        mu = torch.zeros(t - 1, b, 2, dtype=x.dtype)
        mu[..., 0] = torch.linspace(-1, 1, b)  # variance across inputs > 0.01
        mu[..., 1] = 0.3
        zeros = torch.zeros_like(mu)
        return mu, zeros, zeros, zeros

    def predict(self, x_ctx, cond, n_future, x_future=None):
        if x_future is not None:
            return x_future.clone()
        return x_ctx[:, -1:].repeat(1, n_future, 1, 1, 1)


class _Frames:
    def __init__(self, n=16, t=12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, t, 3, 64, 64, generator=g)

    def __len__(self):
        return len(self.x)

    def batch(self, idx, starts, seq_len):
        return self.x[idx, :seq_len], torch.zeros(len(idx), seq_len, 7)


def test_latent_statistics_and_posterior_z_on_a_known_case():
    data = _Frames()
    r = evaluate(_KnownLatents(), data, latent=True, batch_size=8)
    mu0 = torch.linspace(-1, 1, 8)  # in each of the two batches of 8
    assert r["active_units"] == 1
    assert r["posterior_mean_variance"][1] == pytest.approx(0.0, abs=1e-12)
    # KL of N(mu, 1) from N(0, 1) is mu^2 / 2 per dimension
    per_dim1 = 0.3 ** 2 / 2
    assert r["kl_per_dim"][1] == pytest.approx(per_dim1)
    expected0 = (mu0 ** 2 / 2).mean().item()
    assert r["kl_per_dim"][0] == pytest.approx(expected0)
    assert r["kl"] == pytest.approx(expected0 + per_dim1)
    assert len(r["kl_per_step"]) == 10
    post = evaluate(_KnownLatents(), data, z="posterior")
    assert post["psnr"] == 100.0 and r["psnr"] == pytest.approx(r["baseline_psnr"])
    with pytest.raises(ValueError, match="z="):
        evaluate(_KnownLatents(), data, z="other")


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu1, lv1, mu2, lv2 = torch.randn(4, 5, 4, generator=g).unbind(-1)
    q = torch.distributions.Normal(mu1, (0.5 * lv1).exp())
    p = torch.distributions.Normal(mu2, (0.5 * lv2).exp())
    assert torch.allclose(gaussian_kl(mu1, lv1, mu2, lv2), torch.distributions.kl_divergence(q, p),
                          atol=1e-6)


def test_posterior_z_changes_predictions_of_a_real_model():
    torch.manual_seed(0)
    model = SVG(preset("tiny")).eval()
    x, c = torch.rand(2, 6, 3, 64, 64), torch.randn(2, 6, 7)
    torch.manual_seed(1)
    a = model.predict(x[:, :2], c, 4, x_future=x[:, 2:])
    torch.manual_seed(1)
    b = model.predict(x[:, :2], c, 4, x_future=x[:, 2:])
    torch.manual_seed(1)
    prior = model.predict(x[:, :2], c, 4)
    assert torch.equal(a, b) and a.shape == prior.shape == (2, 4, 3, 64, 64)
    assert (a - prior).abs().max() > 0  # other z, other frames
    mu, logvar, mu_p, logvar_p = model.latents(x)
    assert mu.shape == (5, 2, 4) and not mu_p.any()


def test_check_data_stats_on_the_real_sample_and_synthetic(bair_sample, synth_root, capsys):
    from cvae.__main__ import main
    from cvae.datastats import dataset_stats

    real = dataset_stats(bair_sample)
    assert real["sequences"] == 1
    assert real["channel_mean"] == pytest.approx([0.647, 0.639, 0.568], abs=1e-3)
    assert real["changed_any"] == pytest.approx(0.891, abs=1e-3)
    assert real["copy_last_psnr"] == pytest.approx(24.02, abs=0.01)
    assert real["position_step_per_action"] == pytest.approx(0.469, abs=1e-3)
    assert real["action2_values"] == real["action3_values"] == 3
    gif = dataset_stats(bair_sample / "other_sequence_frames_only.gif")
    assert gif["copy_last_psnr"] == pytest.approx(20.41, abs=0.01)
    assert gif["position_step_per_action"] is None
    assert main(["check-data", str(bair_sample), str(synth_root), "--stats"]) == 0
    out = capsys.readouterr().out
    assert "copy-last PSNR" in out and "24.02" in out and "bair_sample" in out.split("\n")[0]
    assert main(["check-data", str(synth_root), "--stats", "--json", "--max-sequences", "8"]) == 0
    (col,) = json.loads(capsys.readouterr().out)
    assert col["sequences"] == 8
    assert main(["check-data", str(synth_root / "nothing"), "--stats"]) == 2


def test_synthetic_statistics_are_calibrated_to_real_bair():
    """The simulator's defaults land near the real sample (README table): colour, camera
    noise, position step per action, discrete action columns, copy-last PSNR in the range of
    the two real sequences (20.4 and 24.0 dB)."""
    from cvae import synth
    from cvae.datastats import sequence_stats

    def sequences():
        for i in range(24):
            s = synth.simulate(synth.sequence_rng(0, "train", i))
            yield s.frames, np.concatenate([s.actions, s.positions], 1)

    st = sequence_stats(sequences())
    assert st["channel_mean"] == pytest.approx([0.647, 0.639, 0.568], rel=0.15)
    assert st["channel_mean"][2] < min(st["channel_mean"][:2])  # BAIR's low blue
    assert all(0.2 < s < 0.3 for s in st["channel_std"])
    assert 0.85 < st["changed_any"] < 0.98 and 0.25 < st["changed_over_2"] < 0.64
    assert 0.4 < st["position_step_per_action"] < 0.54 and 0.85 < st["position_action_corr"]
    assert 0.034 < st["planar_action_size"] < 0.047
    assert st["action2_values"] == st["action3_values"] == 3
    assert 19.5 < st["copy_last_psnr"] < 24.0
