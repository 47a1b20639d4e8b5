"""SVG (Denton & Fergus 2018, "Stochastic Video Generation with a Learned Prior") for
action-conditioned video prediction: VGG64 encoder/decoder with skip connections, an LSTM frame
predictor, a Gaussian LSTM posterior q(z_t | x_{1:t}) and a fixed N(0, I) (SVG-FP) or learned
p(z_t | x_{1:t-1}) (SVG-LP) prior.

Modules are pure: no device, no batch size and no recurrent state are stored; LSTM state is
passed in and returned, created with `new_zeros` on the input's device.

Shapes: frames (B, T, 3, 64, 64), conditions (B, T, cond_dim); `SVG.encode` returns encodings
(T, B, g_dim) and skips time-major.

One file over 350 lines on purpose: it is read side by side with SVG's reference modules
(vgg_64.py, lstm.py) and with the tests that hold the batched step equal to the per-step loop;
splitting the modules from the step would separate what those comparisons check together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
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


def upsampled_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight (C_out, C_in, 3, 3) -> the conv_transpose2d weight (C_in, C_out, 4, 4)
    that computes, with stride 2 and padding 1 on the small map, the 3x3 conv (padding 1) of
    its nearest 2x upsampling: 2.25x fewer multiply-adds. Along each axis the small map's row
    r-1 meets output row 2r through tap 0 and row r through taps 1 + 2; row 2r+1 sees row r
    through taps 0 + 1 and row r+1 through tap 2: 4x4 taps (2, 1+2, 0+1, 0)."""
    def along(w: torch.Tensor, dim: int) -> torch.Tensor:
        a, b, c = w.unbind(dim)
        return torch.stack([c, b + c, a + b, a], dim)

    return along(along(w, 2), 3).transpose(0, 1)


# Below this many input positions (batch x height x width) oneDNN's transposed convolution is
# slower on CPU than upsampling and convolving (measured: 4 x 4x4 maps of 512 channels), so
# the decoder's first up block takes the plain path in step-by-step loops.
SMALL_MAP = 256


class Decoder(nn.Module):
    """Mirror of the encoder: g_dim vector + skips -> 64x64 frame in [0, 1] (sigmoid).

    Each up block starts with conv3x3(cat([upsample(d), skip])). Its two halves are computed
    apart, which is the same sum: the upsampled half as one transposed convolution
    (`upsampled_conv_weight`), the skip half by `skip_terms`, once per distinct skip map, so
    that steps sharing the last context frame's skips share that work."""

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

    def _blocks(self) -> tuple[nn.Sequential, ...]:
        return self.upc2, self.upc3, self.upc4, self.upc5

    def split_weights(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per up block, the first convolution's weight split into its two halves: the
        upsampled input's (as it is, 3x3, and as a 4x4 transposed-conv weight) and the skip
        map's. Computing them once per training step (not per decoded step) keeps their cost
        and backward out of step-by-step loops."""
        halves = []
        for block in self._blocks():
            w = block[0][0].weight  # (C_out, 2 C, 3, 3): upsampled input's C, then the skip's
            c = w.shape[1] // 2
            halves.append((w[:, :c], upsampled_conv_weight(w[:, :c]), w[:, c:]))
        return halves

    def skip_terms(self, skips: list[torch.Tensor], weights: list[tuple[torch.Tensor, ...]]
                   ) -> list[torch.Tensor]:
        """The skip maps' share of each up block's first convolution (weights from
        `split_weights`), in the order the blocks use them: (N, c4, 8, 8), (N, c3, 16, 16),
        (N, c2, 32, 32), (N, c1, 64, 64)."""
        return [F.conv2d(s, w[2], padding=1) for w, s in zip(weights, skips[::-1])]

    def decode(self, h: torch.Tensor, terms: list[torch.Tensor],
               weights: list[tuple[torch.Tensor, ...]],
               add: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.add
               ) -> torch.Tensor:
        """(N, g_dim) + skip terms -> (N, 3, 64, 64), weights from `split_weights`.
        `add(y, term)` adds a block's skip term to its upsampled half y (N, C, s, s); the
        default needs one term per row."""
        d = self.upc1(h[:, :, None, None])  # (N, c4, 4, 4)
        for block, (w3, w4, _), term in zip(self._blocks(), weights, terms):
            bias = block[0][0].bias
            if d.shape[0] * d.shape[2] * d.shape[3] < SMALL_MAP:
                y = F.conv2d(F.interpolate(d, scale_factor=2.0, mode="nearest"), w3, bias,
                             padding=1)
            else:
                y = F.conv_transpose2d(d, w4, bias, stride=2, padding=1)
            d = block[1:](block[0][2](block[0][1](add(y, term))))  # BN, LeakyReLU, rest
        return d

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        weights = self.split_weights()
        return self.decode(h, self.skip_terms(skips, weights), weights)


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


def init_svg_(module: nn.Module) -> None:
    """SVG's `utils.init_weights`, applied to every submodule: conv (and transposed conv) and
    linear weights N(0, 0.02), biases 0; BatchNorm weight N(1, 0.02), bias 0. LSTM cells keep
    PyTorch's initialisation, as in SVG (their class names match neither pattern)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4): differentiable in
    mu and logvar."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: Optional[torch.Tensor] = None,
                  logvar2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(N(mu1, var1) || N(mu2, var2)) summed over latent dims and averaged over the batch
    (SVG's kl_criterion); N(0, I) when mu2/logvar2 are None (VAE paper, Appendix B:
    -0.5 * sum(1 + log var - mu^2 - var))."""
    return gaussian_kl(mu1, logvar1, mu2, logvar2).sum() / mu1.shape[0]


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: Optional[torch.Tensor] = None,
                logvar2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Elementwise KL(N(mu1, var1) || N(mu2, var2)) of diagonal Gaussians, in nats."""
    if mu2 is None:
        return -0.5 * (1 + logvar1 - mu1.pow(2) - logvar1.exp())
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1)


class VectorCondition(nn.Module):
    """Vector conditions (BAIR: 4-dim action + 3-dim end-effector position) enter the predictor
    as they are. The condition path is a module so that image conditions (pose maps) can plug
    in with an encoder of their own; `out_dim` is what the predictor receives per step."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.out_dim = cond_dim

    def forward(self, c: Optional[torch.Tensor], x: torch.Tensor,
                steps: Optional[int] = None) -> torch.Tensor:
        """Conditions (B, T, cond_dim) as they are; None (an unconditional model) becomes
        (B, T, 0), adding nothing to the predictor's input, for frames x (B, T, ...) or
        `steps` frames."""
        if c is not None:
            return c
        return x.new_zeros(x.shape[0], steps or x.shape[1], 0)


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

    def __init__(self, cfg: Config, channels: int = 3, cond_dim: Optional[int] = None):
        """`channels` of the frames (BAIR: RGB; SM-MNIST: 1); `cond_dim` of the condition
        vector per frame (None: cfg.cond_dim; 0: unconditional, as SVG's SM-MNIST model)."""
        super().__init__()
        self.n_past, self.last_frame_skip = cfg.n_past, cfg.last_frame_skip
        self.learned_prior, self.z_dim = cfg.learned_prior, cfg.z_dim
        self.condition = VectorCondition(cfg.cond_dim if cond_dim is None else cond_dim)
        self.encoder = Encoder(cfg.g_dim, cfg.width, channels)
        self.decoder = Decoder(cfg.g_dim, cfg.width, channels)
        pred_in = self.condition.out_dim + cfg.g_dim + cfg.z_dim
        self.frame_predictor = LSTM(pred_in, cfg.g_dim, cfg.rnn_size, cfg.predictor_rnn_layers)
        self.posterior = GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_rnn_layers)
        self.prior = (GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.prior_rnn_layers)
                      if cfg.learned_prior else None)
        if cfg.init == "svg":
            init_svg_(self)

    # -------------------------------------------------------------- helpers over (T, B, ...)
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All frames in one batched call, time-major: (B, T, 3, H, W) -> (T, B, g) and skips
        (T, B, c, s, s), so that one step's or the first k steps' rows are contiguous."""
        b, t = x.shape[:2]
        h, skips = self.encoder(x.transpose(0, 1).flatten(0, 1))
        return h.unflatten(0, (t, b)), [s.unflatten(0, (t, b)) for s in skips]

    def _kl(self, mu, logvar, h_prev, prior_state):
        if self.prior is None:
            return kl_divergence(mu, logvar), prior_state
        _, mu_p, logvar_p, prior_state = self.prior(h_prev, prior_state)
        return kl_divergence(mu, logvar, mu_p, logvar_p), prior_state

    # -------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor],
                teacher_forcing: torch.Tensor | bool = True) -> StepOutput:
        """Training loss terms for frames x (B, T, 3, 64, 64) and conditions (B, T, C).

        `teacher_forcing` (bool or per-sequence bool tensor (B,)) feeds ground-truth frames
        as the next input; otherwise the model's own predictions are fed after the context.
        """
        tf = torch.as_tensor(teacher_forcing, device=x.device).expand(x.shape[0])
        if bool(tf.all()):
            return self.teacher_forced(x, cond)
        return self.rollout(x, cond, tf)

    def teacher_forced(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> StepOutput:
        """Every frame goes through the encoder once and the decoder runs once over all
        predicted steps; only the LSTMs step through time."""
        b, t = x.shape[:2]
        h, skips = self.encode(x)  # (T, B, g); skips (T, B, c, s, s)
        c = self.condition(cond, x)
        kld = x.new_zeros(())
        post_state = pred_state = prior_state = None
        tops = []
        for i in range(1, t):
            z, mu, logvar, post_state = self.posterior(h[i], post_state)  # q(z_i | x_1:i)
            kl, prior_state = self._kl(mu, logvar, h[i - 1], prior_state)
            kld = kld + kl
            top, pred_state = self.frame_predictor.step(
                torch.cat([c[:, i], h[i - 1], z], 1), pred_state)
            tops.append(top)
        # output head (linear + BN + tanh) over all steps at once: ((T-1) * B, g), step-major
        h_pred = self.frame_predictor.output(torch.cat(tops))
        # step j (predicting frame j+1) takes the skips of frame min(j, k): its input frame in
        # the context (every frame with last_frame_skip), then the last context frame's. The
        # skip terms of frames 0..k are computed once and broadcast over the steps sharing them.
        k = t - 2 if self.last_frame_skip else min(self.n_past - 1, t - 2)
        weights = self.decoder.split_weights()
        terms = self.decoder.skip_terms([s[:k + 1].flatten(0, 1) for s in skips], weights)
        n = k * b

        def add(y: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
            # y ((T-1) * B, C, s, s); term ((k+1) * B, C, s, s); the last B rows of term
            # (frame k) broadcast over steps k..T-2 viewed as (T-1-k, B, C, s, s)
            rest = (y[n:].unflatten(0, (-1, b)) + term[n:]).flatten(0, 1)
            return torch.cat([y[:n] + term[:n], rest]) if n else rest

        x_pred = self.decoder.decode(h_pred, terms, weights, add).unflatten(0, (t - 1, b))
        err = (x_pred - x[:, 1:].transpose(0, 1)).pow(2)  # (T-1, B, 3, 64, 64)
        mse = err.mean(dim=(1, 2, 3, 4)).sum()  # sum over steps of per-step mean
        return StepOutput(mse, kld, t - 1)

    def rollout(self, x: torch.Tensor, cond: Optional[torch.Tensor], tf: torch.Tensor
                ) -> StepOutput:
        """Step-by-step training pass; sequences with tf False get their own predictions as
        input after the context. Ground-truth frames are encoded in one batched call and the
        context frames' skip terms in another."""
        b, t = x.shape[:2]
        h, skips = self.encode(x)  # (T, B, g); skips (T, B, c, s, s)
        weights = self.decoder.split_weights()  # once for all steps
        m = min(self.n_past, t - 1)
        ctx_terms = self.decoder.skip_terms([s[:m].flatten(0, 1) for s in skips], weights)
        c = self.condition(cond, x)
        mse = kld = x.new_zeros(())
        post_state = pred_state = prior_state = None
        keep = tf.view(b, 1)
        for i in range(1, t):
            if i <= self.n_past:  # context: ground-truth input frame i-1 and its skips
                h_in, terms = h[i - 1], [g[(i - 1) * b:i * b] for g in ctx_terms]
            z, mu, logvar, post_state = self.posterior(h[i], post_state)
            kl, prior_state = self._kl(mu, logvar, h_in, prior_state)
            kld = kld + kl
            h_pred, pred_state = self.frame_predictor(torch.cat([c[:, i], h_in, z], 1),
                                                      pred_state)
            x_pred = self.decoder.decode(h_pred, terms, weights)
            mse = mse + (x_pred - x[:, i]).pow(2).mean()
            if self.n_past <= i < t - 1:
                h_own, skip_own = self.encoder(x_pred)
                h_in = torch.where(keep, h[i], h_own)
                if self.last_frame_skip:
                    terms = self.decoder.skip_terms(
                        [torch.where(keep.view(b, 1, 1, 1), s[i], so)
                         for s, so in zip(skips, skip_own)], weights)
        return StepOutput(mse, kld, t - 1)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def latents(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, ...]:
        """Posterior q(z_t | x_1:t) and prior parameters of steps t = 1..T-1 on ground-truth
        frames x (B, T, 3, 64, 64), as in the teacher-forced training pass: (mu, logvar, mu_p,
        logvar_p), each (T-1, B, z_dim); the fixed prior's are zeros. `cond` is not used (SVG's
        posterior and prior see frames only; the argument is the interface shared with tasks
        whose posterior sees the conditions)."""
        h, _ = self.encode(x)  # (T, B, g)
        post_state = prior_state = None
        rows = []
        for i in range(1, x.shape[1]):
            _, mu, logvar, post_state = self.posterior(h[i], post_state)
            if self.prior is None:
                mu_p = logvar_p = torch.zeros_like(mu)
            else:
                _, mu_p, logvar_p, prior_state = self.prior(h[i - 1], prior_state)
            rows.append((mu, logvar, mu_p, logvar_p))
        return tuple(torch.stack(r) for r in zip(*rows))

    @torch.no_grad()
    def predict(self, x_ctx: torch.Tensor, cond: Optional[torch.Tensor], n_future: int,
                x_future: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample n_future frames after the context x_ctx (B, n_past, 3, 64, 64) given the
        conditions of every frame (B, n_past + n_future, C); z from the posterior over the
        context and from the prior afterwards. With the true future frames `x_future`
        (B, n_future, 3, 64, 64), z keeps coming from the posterior q(z_t | x_1:t) on the true
        frames (what z can carry at most; the frames fed back are still the model's own).
        Returns (B, n_future, 3, 64, 64)."""
        n_past = x_ctx.shape[1]
        h_ctx, skips = self.encode(x_ctx)  # (n_past, B, g)
        h_true = self.encode(x_future)[0] if x_future is not None else None  # (n_future, B, g)
        weights = self.decoder.split_weights()
        terms = self.decoder.skip_terms([s[-1] for s in skips], weights)  # last context frame's
        c = self.condition(cond, x_ctx, n_past + n_future)
        post_state = pred_state = prior_state = None
        h_in = h_ctx[0]
        out = []
        for i in range(1, n_past + n_future):
            if i < n_past:
                z, _, _, post_state = self.posterior(h_ctx[i], post_state)
                if self.prior is not None:
                    prior_state = self.prior(h_in, prior_state)[3]
            elif h_true is not None:
                z, _, _, post_state = self.posterior(h_true[i - n_past], post_state)
            elif self.prior is not None:
                z, _, _, prior_state = self.prior(h_in, prior_state)
            else:
                z = h_in.new_empty(h_in.shape[0], self.z_dim).normal_()
            h_pred, pred_state = self.frame_predictor(torch.cat([c[:, i], h_in, z], 1),
                                                      pred_state)
            if i < n_past:
                h_in = h_ctx[i]
                continue
            x_pred = self.decoder.decode(h_pred, terms, weights)
            out.append(x_pred)
            if i < n_past + n_future - 1:
                h_in, skip_own = self.encoder(x_pred)
                if self.last_frame_skip:
                    terms = self.decoder.skip_terms(skip_own, weights)
        return torch.stack(out, 1)
