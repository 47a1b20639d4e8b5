import pytest
import torch

from cvae.config import preset
from cvae.model import SVG, GaussianLSTM, kl_divergence, reparameterize


def tiny(**kw):
    return preset("tiny", **kw)


def batch(b=3, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, 64, 64, generator=g), torch.randn(b, t, 7, generator=g)


def test_reparameterization_gradients_flow_to_mu_and_logvar():
    mu = torch.zeros(5, 4, requires_grad=True)
    logvar = torch.zeros(5, 4, requires_grad=True)
    z = reparameterize(mu, logvar)
    (z ** 2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    # z = mu + sigma * eps: with a huge negative logvar the sample is mu
    assert torch.allclose(reparameterize(torch.ones(3), torch.full((3,), -60.0)), torch.ones(3))


def test_reparameterization_has_the_right_moments():
    torch.manual_seed(0)
    mu, logvar = torch.full((200000,), 1.5), torch.full((200000,), 2 * torch.log(torch.tensor(0.5)))
    z = reparameterize(mu, logvar)
    assert z.mean().item() == pytest.approx(1.5, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("learned", [False, True])
def test_kl_matches_torch_distributions(learned):
    torch.manual_seed(0)
    mu1, lv1 = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu1, torch.exp(0.5 * lv1))
    if learned:
        mu2, lv2 = torch.randn(4, 6), torch.randn(4, 6)
        p = torch.distributions.Normal(mu2, torch.exp(0.5 * lv2))
        ours = kl_divergence(mu1, lv1, mu2, lv2)
    else:
        p = torch.distributions.Normal(torch.zeros(4, 6), torch.ones(4, 6))
        ours = kl_divergence(mu1, lv1)
    ref = torch.distributions.kl_divergence(q, p).sum() / 4  # summed over z, mean over batch
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_modules_are_batch_size_and_state_free():
    cfg = tiny()
    model = SVG(cfg)
    for b in (2, 5):
        x, c = batch(b=b)
        out = model(x, c, True)
        assert out.steps == 5 and torch.isfinite(out.mse) and torch.isfinite(out.kld)
    lstm = GaussianLSTM(8, 3, 16, 2)
    z, mu, logvar, state = lstm(torch.randn(7, 8))
    assert z.shape == (7, 3) and len(state) == 2 and state[0][0].shape == (7, 16)


@pytest.mark.parametrize("last_frame_skip", [False, True])
@pytest.mark.parametrize("learned_prior", [False, True])
def test_batched_teacher_forcing_equals_per_step_loop(last_frame_skip, learned_prior):
    """The batched path (encoder once, decoder once) computes the same loss and gradients as
    the per-timestep loop on the same weights (eval-mode BN, same z samples)."""
    cfg = tiny(last_frame_skip=last_frame_skip, learned_prior=learned_prior, n_past=3)
    model = SVG(cfg).eval()
    x, c = batch(b=3, t=7)
    results = []
    for path in ("batched", "loop"):
        model.zero_grad()
        torch.manual_seed(1)
        out = (model.teacher_forced(x, c) if path == "batched"
               else model.rollout(x, c, torch.ones(3, dtype=torch.bool)))
        (out.mse + 0.1 * out.kld).backward()
        results.append((out.mse.item(), out.kld.item(),
                        [p.grad.clone() for p in model.parameters()]))
    (mse_a, kld_a, g_a), (mse_b, kld_b, g_b) = results
    assert mse_a == pytest.approx(mse_b, rel=1e-5)
    assert kld_a == pytest.approx(kld_b, rel=1e-5)
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def plain_decode(dec, h, skips):
    """The decoder written out as SVG's vgg_64 does it: upsample, concatenate, convolve."""
    up = torch.nn.Upsample(scale_factor=2, mode="nearest")
    d = dec.upc1(h[:, :, None, None])
    for block, s in zip((dec.upc2, dec.upc3, dec.upc4, dec.upc5), reversed(skips)):
        d = block(torch.cat([up(d), s], 1))
    return d


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("b", [4, 16])  # first up block: upsample + conv (4), transposed (16)
def test_decoder_equals_upsample_concat_convolve(channels_last, b):
    """Transposed-conv upsampling and split skip terms compute SVG's decoder, values and
    gradients (eval-mode BN: in train mode the gradient of a bias before BN is 0 up to
    rounding, which no tolerance can compare)."""
    model = SVG(tiny(width=0.125)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, _ = batch(b=b, t=1)
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    outs = []
    for decode in (model.decoder, lambda h, s: plain_decode(model.decoder, h, s)):
        model.zero_grad()
        y = decode(*model.encoder(x[:, 0]))
        (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in params]))
    (ya, ga), (yb, gb) = outs
    assert ya.shape == (b, 3, 64, 64)
    assert torch.allclose(ya, yb, atol=1e-5)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("tf", [True, False])
@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_training_step_equals_the_per_timestep_reference(tf, last_frame_skip):
    """The project's step (batched when teacher forced, step-wise otherwise) computes the
    loss and gradients of the straightforward loop that encodes x_{t-1} and x_t and decodes
    one frame per step (cvae.bench.reference_step, with SVG's literal decoder)."""
    from cvae.bench import reference_step

    model = SVG(tiny(last_frame_skip=last_frame_skip, n_past=2)).eval()
    x, c = batch(b=3, t=6)
    literal = model.decoder.forward
    results = []
    for path in ("project", "reference"):
        model.zero_grad()
        torch.manual_seed(1)
        if path == "project":
            out = model(x, c, tf)
            mse, kld = out.mse, out.kld
        else:
            model.decoder.forward = lambda h, s: plain_decode(model.decoder, h, s)
            mse, kld = reference_step(model, x, c, tf)
            model.decoder.forward = literal
        (mse + 0.1 * kld).backward()
        results.append((mse.item(), kld.item(), [p.grad.clone() for p in model.parameters()]))
    (mse_a, kld_a, g_a), (mse_b, kld_b, g_b) = results
    assert mse_a == pytest.approx(mse_b, rel=1e-5)
    assert kld_a == pytest.approx(kld_b, rel=1e-5)
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _record_predictor_inputs(model, x, c, tf):
    """Run a training pass and return what the frame predictor got as frame encodings per step
    (B, T-1, g), and the encodings of the ground-truth frames (B, T, g)."""
    seen = []
    hook = model.frame_predictor.embed.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    torch.manual_seed(0)
    model(x, c, tf)
    hook.remove()
    cond_dim, g = model.condition.out_dim, model.encoder.g_dim
    h_in = torch.stack([s[:, cond_dim:cond_dim + g] for s in seen], 1)
    return h_in, model.encode(x)[0].transpose(0, 1)


@pytest.mark.parametrize("tf", [[True, True], [False, False], [True, False]])
def test_teacher_forcing_decides_the_predictor_input_per_sequence(tf):
    """With teacher forcing, step t's input is the encoding of ground-truth x_{t-1}; without,
    after the context it is the encoding of the model's own prediction. The coin is per
    sequence."""
    model = SVG(tiny(n_past=2)).eval()
    t = 6
    x = torch.linspace(0, 1, t).view(1, t, 1, 1, 1).expand(2, t, 3, 64, 64).contiguous()
    x[1] = 1 - x[1]
    c = torch.randn(2, t, 7)
    with torch.no_grad():
        for m in model.modules():  # calibrate BN so that encodings tell the frames apart
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        model.train()
        model.encode(x)
        model.eval()
        h_in, h_gt = _record_predictor_inputs(model, x, c, torch.tensor(tf))
    for b, forced in enumerate(tf):
        # context steps (t = 1..n_past) always see ground truth
        assert torch.allclose(h_in[b, :2], h_gt[b, :2], atol=1e-6)
        later_is_gt = torch.allclose(h_in[b, 2:], h_gt[b, 2:t - 1], atol=1e-4)
        assert later_is_gt == forced


def test_predict_shapes_and_range():
    model = SVG(tiny()).eval()
    x, c = batch(b=2, t=8)
    pred = model.predict(x[:, :2], c, 6)
    assert pred.shape == (2, 6, 3, 64, 64)
    assert pred.min() >= 0 and pred.max() <= 1


@pytest.mark.parametrize("width", [0.0625, 0.25])
def test_width_multiplier_scales_parameters(width):
    small, big = SVG(tiny(width=width)), SVG(tiny(width=width * 2))
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(big) > 2 * n(small)
