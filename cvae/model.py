"""SVG (Denton & Fergus 2018, "Stochastic Video Generation with a Learned Prior") for
action-conditioned video prediction: VGG64 encoder/decoder with skip connections, an LSTM frame
predictor, a Gaussian LSTM posterior q(z_t | x_{1:t}) and a fixed N(0, I) (SVG-FP) or learned
p(z_t | x_{1:t-1}) (SVG-LP) prior.

Modules are pure: no device, no batch size and no recurrent state are stored; LSTM state is
passed in and returned, created with `new_zeros` on the input's device.

Shapes: frames (B, T, 3, 64, 64), conditions (B, T, cond_dim), encodings (B, T, g_dim).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from cvae.config import Config

LSTMState = list[tuple[torch.Tensor, torch.Tensor]]


def vgg_layer(nin: int, nout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(nin, nout, 3, 1, 1), nn.BatchNorm2d(nout),
                         nn.LeakyReLU(0.2, inplace=True))


def channels(width: float) -> list[int]:
    """VGG64 channel sizes 64-128-256-512 scaled by the width multiplier (at least 4 each)."""
    return [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]


class Encoder(nn.Module):
    """VGG64 encoder: 64x64 frame -> g_dim vector (BN + tanh) and four skip maps
    (c1 x 64x64, c2 x 32x32, c3 x 16x16, c4 x 8x8)."""

    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3):
        super().__init__()
        c1, c2, c3, c4 = channels(width)
        self.g_dim = g_dim
        self.c1 = nn.Sequential(vgg_layer(nc, c1), vgg_layer(c1, c1))
        self.c2 = nn.Sequential(vgg_layer(c1, c2), vgg_layer(c2, c2))
        self.c3 = nn.Sequential(vgg_layer(c2, c3), vgg_layer(c3, c3), vgg_layer(c3, c3))
        self.c4 = nn.Sequential(vgg_layer(c3, c4), vgg_layer(c4, c4), vgg_layer(c4, c4))
        self.c5 = nn.Sequential(nn.Conv2d(c4, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())
        self.mp = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h1 = self.c1(x)  # (N, c1, 64, 64)
        h2 = self.c2(self.mp(h1))  # (N, c2, 32, 32)
        h3 = self.c3(self.mp(h2))  # (N, c3, 16, 16)
        h4 = self.c4(self.mp(h3))  # (N, c4, 8, 8)
        h5 = self.c5(self.mp(h4))  # (N, g_dim, 1, 1)
        return h5.flatten(1), [h1, h2, h3, h4]


class Decoder(nn.Module):
    """Mirror of the encoder: g_dim vector + skips -> 64x64 frame in [0, 1] (sigmoid)."""

    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3):
        super().__init__()
        c1, c2, c3, c4 = channels(width)
        self.upc1 = nn.Sequential(nn.ConvTranspose2d(g_dim, c4, 4, 1, 0), nn.BatchNorm2d(c4),
                                  nn.LeakyReLU(0.2, inplace=True))
        self.upc2 = nn.Sequential(vgg_layer(c4 * 2, c4), vgg_layer(c4, c4), vgg_layer(c4, c3))
        self.upc3 = nn.Sequential(vgg_layer(c3 * 2, c3), vgg_layer(c3, c3), vgg_layer(c3, c2))
        self.upc4 = nn.Sequential(vgg_layer(c2 * 2, c2), vgg_layer(c2, c1))
        self.upc5 = nn.Sequential(vgg_layer(c1 * 2, c1), nn.ConvTranspose2d(c1, nc, 3, 1, 1),
                                  nn.Sigmoid())
        self.up = nn.UpsamplingNearest2d(scale_factor=2)

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        d1 = self.upc1(h[:, :, None, None])  # (N, c4, 4, 4)
        d2 = self.upc2(torch.cat([self.up(d1), skips[3]], 1))  # (N, c3, 8, 8)
        d3 = self.upc3(torch.cat([self.up(d2), skips[2]], 1))  # (N, c2, 16, 16)
        d4 = self.upc4(torch.cat([self.up(d3), skips[1]], 1))  # (N, c1, 32, 32)
        return self.upc5(torch.cat([self.up(d4), skips[0]], 1))  # (N, 3, 64, 64)


def _zero_state(x: torch.Tensor, layers: int, size: int) -> LSTMState:
    return [(x.new_zeros(x.shape[0], size), x.new_zeros(x.shape[0], size)) for _ in range(layers)]


class StackedLSTM(nn.Module):
    """Linear embed followed by stacked LSTMCells; state is passed in and returned."""

    def __init__(self, input_size: int, hidden_size: int, n_layers: int):
        super().__init__()
        self.hidden_size, self.n_layers = hidden_size, n_layers
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList(nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers))

    def step(self, x: torch.Tensor, state: Optional[LSTMState]) -> tuple[torch.Tensor, LSTMState]:
        """One step: (B, input_size) -> top hidden (B, hidden_size), new state."""
        state = state or _zero_state(x, self.n_layers, self.hidden_size)
        h, new_state = self.embed(x), []
        for cell, s in zip(self.lstm, state):
            s = cell(h, s)
            new_state.append(s)
            h = s[0]
        return h, new_state


class LSTM(StackedLSTM):
    """Frame predictor: linear embed, stacked LSTMCells, linear + BN + tanh output."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int):
        super().__init__(input_size, hidden_size, n_layers)
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size),
                                    nn.BatchNorm1d(output_size), nn.Tanh())

    def forward(self, x: torch.Tensor, state: Optional[LSTMState] = None):
        h, state = self.step(x, state)
        return self.output(h), state


class GaussianLSTM(StackedLSTM):
    """q(z_t | .) or p(z_t | .): LSTM with mu / logvar heads and the reparameterization trick."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, n_layers: int):
        super().__init__(input_size, hidden_size, n_layers)
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, state: Optional[LSTMState] = None):
        h, state = self.step(x, state)
        mu, logvar = self.mu_net(h), self.logvar_net(h)
        return reparameterize(mu, logvar), mu, logvar, state


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4): differentiable in
    mu and logvar."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: Optional[torch.Tensor] = None,
                  logvar2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(N(mu1, var1) || N(mu2, var2)) summed over latent dims and averaged over the batch
    (SVG's kl_criterion); N(0, I) when mu2/logvar2 are None (VAE paper, Appendix B:
    -0.5 * sum(1 + log var - mu^2 - var))."""
    if mu2 is None:
        kld = -0.5 * (1 + logvar1 - mu1.pow(2) - logvar1.exp())
    else:
        kld = 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1)
    return kld.sum() / mu1.shape[0]


class VectorCondition(nn.Module):
    """Vector conditions (BAIR: 4-dim action + 3-dim end-effector position) enter the predictor
    as they are. The condition path is a module so that image conditions (pose maps) can plug
    in with an encoder of their own; `out_dim` is what the predictor receives per step."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.out_dim = cond_dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c


@dataclass
class StepOutput:
    """Sum over predicted steps of the per-step MSE (mean over pixels) and the KL term, plus
    the number of steps they were summed over."""
    mse: torch.Tensor
    kld: torch.Tensor
    steps: int


class SVG(nn.Module):
    """The conditional VAE. Step t (1..T-1) predicts x_t from the condition c_t, the encoding of
    x_{t-1} (ground truth, or the model's own prediction when not teacher forced) and z_t."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_past, self.last_frame_skip = cfg.n_past, cfg.last_frame_skip
        self.learned_prior, self.z_dim = cfg.learned_prior, cfg.z_dim
        self.condition = VectorCondition(cfg.cond_dim)
        self.encoder = Encoder(cfg.g_dim, cfg.width)
        self.decoder = Decoder(cfg.g_dim, cfg.width)
        pred_in = self.condition.out_dim + cfg.g_dim + cfg.z_dim
        self.frame_predictor = LSTM(pred_in, cfg.g_dim, cfg.rnn_size, cfg.predictor_rnn_layers)
        self.posterior = GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_rnn_layers)
        self.prior = (GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.prior_rnn_layers)
                      if cfg.learned_prior else None)

    # -------------------------------------------------------------- helpers over (B, T, ...)
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All frames in one batched call: (B, T, 3, H, W) -> (B, T, g), skips (B, T, c, h, w)."""
        b, t = x.shape[:2]
        h, skips = self.encoder(x.flatten(0, 1))
        return h.unflatten(0, (b, t)), [s.unflatten(0, (b, t)) for s in skips]

    def _kl(self, mu, logvar, h_prev, prior_state):
        if self.prior is None:
            return kl_divergence(mu, logvar), prior_state
        _, mu_p, logvar_p, prior_state = self.prior(h_prev, prior_state)
        return kl_divergence(mu, logvar, mu_p, logvar_p), prior_state

    # -------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, cond: torch.Tensor,
                teacher_forcing: torch.Tensor | bool = True) -> StepOutput:
        """Training loss terms for frames x (B, T, 3, 64, 64) and conditions (B, T, C).

        `teacher_forcing` (bool or per-sequence bool tensor (B,)) feeds ground-truth frames
        as the next input; otherwise the model's own predictions are fed after the context.
        """
        tf = torch.as_tensor(teacher_forcing, device=x.device).expand(x.shape[0])
        if bool(tf.all()):
            return self.teacher_forced(x, cond)
        return self.rollout(x, cond, tf)

    def teacher_forced(self, x: torch.Tensor, cond: torch.Tensor) -> StepOutput:
        """Every frame goes through the encoder once and the decoder runs once over all
        predicted steps; only the LSTMs step through time."""
        b, t = x.shape[:2]
        h, skips = self.encode(x)  # (B, T, g); skips (B, T, c, s, s)
        c = self.condition(cond)
        kld = x.new_zeros(())
        post_state = pred_state = prior_state = None
        tops = []
        for i in range(1, t):
            z, mu, logvar, post_state = self.posterior(h[:, i], post_state)  # q(z_i | x_1:i)
            kl, prior_state = self._kl(mu, logvar, h[:, i - 1], prior_state)
            kld = kld + kl
            top, pred_state = self.frame_predictor.step(
                torch.cat([c[:, i], h[:, i - 1], z], 1), pred_state)
            tops.append(top)
        # output head (linear + BN + tanh) over all steps at once: (B * (T-1), g)
        h_pred = self.frame_predictor.output(torch.stack(tops, 1).flatten(0, 1))
        # skips of each step, (B, T-1, c, s, s): context steps use their input frame, later
        # steps broadcast the last context frame's maps (expand, no gather)
        k = t - 1 if self.last_frame_skip else self.n_past - 1
        step_skips = [torch.cat([s[:, :k], s[:, k:k + 1].expand(-1, t - 1 - k, -1, -1, -1)], 1)
                      if k < t - 1 else s[:, :t - 1] for s in skips]
        x_pred = self.decoder(h_pred, [s.flatten(0, 1) for s in step_skips])
        err = (x_pred.unflatten(0, (b, t - 1)) - x[:, 1:]).pow(2)
        mse = err.mean(dim=(0, 2, 3, 4)).sum()  # sum over steps of per-step mean
        return StepOutput(mse, kld, t - 1)

    def rollout(self, x: torch.Tensor, cond: torch.Tensor, tf: torch.Tensor) -> StepOutput:
        """Step-by-step training pass; sequences with tf False get their own predictions as
        input after the context. Ground-truth targets are encoded in one batched call."""
        b, t = x.shape[:2]
        h, skips = self.encode(x)
        c = self.condition(cond)
        mse = kld = x.new_zeros(())
        post_state = pred_state = prior_state = None
        h_in, skip = h[:, 0], [s[:, 0] for s in skips]
        keep = tf.view(b, 1)
        for i in range(1, t):
            if i <= self.n_past:
                h_in = h[:, i - 1]
            if not self.last_frame_skip and i <= self.n_past:
                skip = [s[:, i - 1] for s in skips]
            z, mu, logvar, post_state = self.posterior(h[:, i], post_state)
            kl, prior_state = self._kl(mu, logvar, h_in, prior_state)
            kld = kld + kl
            h_pred, pred_state = self.frame_predictor(torch.cat([c[:, i], h_in, z], 1),
                                                      pred_state)
            x_pred = self.decoder(h_pred, skip)
            mse = mse + (x_pred - x[:, i]).pow(2).mean()
            if i < t - 1 and i >= self.n_past:
                h_own, skip_own = self.encoder(x_pred)
                h_in = torch.where(keep, h[:, i], h_own)
                if self.last_frame_skip:
                    skip = [torch.where(keep.view(b, 1, 1, 1), s[:, i], so)
                            for s, so in zip(skips, skip_own)]
            elif self.last_frame_skip:
                skip = [s[:, i] for s in skips]
        return StepOutput(mse, kld, t - 1)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def predict(self, x_ctx: torch.Tensor, cond: torch.Tensor, n_future: int) -> torch.Tensor:
        """Sample n_future frames after the context x_ctx (B, n_past, 3, 64, 64) given the
        conditions of every frame (B, n_past + n_future, C); z from the posterior over the
        context and from the prior afterwards. Returns (B, n_future, 3, 64, 64)."""
        n_past = x_ctx.shape[1]
        h_ctx, skips = self.encode(x_ctx)
        c = self.condition(cond)
        post_state = pred_state = prior_state = None
        h_in, skip = h_ctx[:, 0], [s[:, 0] for s in skips]
        out = []
        for i in range(1, n_past + n_future):
            if i < n_past:
                z, _, _, post_state = self.posterior(h_ctx[:, i], post_state)
                if self.prior is not None:
                    prior_state = self.prior(h_in, prior_state)[3]
            elif self.prior is not None:
                z, _, _, prior_state = self.prior(h_in, prior_state)
            else:
                z = h_in.new_empty(h_in.shape[0], self.z_dim).normal_()
            h_pred, pred_state = self.frame_predictor(torch.cat([c[:, i], h_in, z], 1),
                                                      pred_state)
            if i < n_past:
                h_in = h_ctx[:, i]
                skip = [s[:, i] for s in skips]
                continue
            x_pred = self.decoder(h_pred, skip)
            out.append(x_pred)
            if i < n_past + n_future - 1:
                h_in, skip_own = self.encoder(x_pred)
                if self.last_frame_skip:
                    skip = skip_own
        return torch.stack(out, 1)
