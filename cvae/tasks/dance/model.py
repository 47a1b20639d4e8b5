"""The dance lab's conditional VAE: its template's five modules (names and argument defaults
from the lab's `Trainer.py` parser) and its training step, batched over time where the math
allows.

One step t = 1..T-1 of the lab (`training_one_step`), frames x and pose images p::

    f_prev = RGB_Encoder(x_{t-1})           ground truth under teacher forcing, else the
                                            (detached) prediction of step t-1
    f_t, l_t = RGB_Encoder(x_t), Label_Encoder(p_t)
    z, mu, logvar = Gaussian_Predictor(f_t, l_t)       posterior q(z | x_t, p_t), reparameterized
    x_hat_t = Generator(Decoder_Fusion(f_prev, l_t, z))
    loss += MSE(x_hat_t, x_t) + beta * KL(q || N(0, I))  KL summed over (N_dim, H, W), / B

At test time z ~ N(0, I) of shape (B, N_dim, H, W) (the lab's `val_one_step`). Every module is
fully convolutional at the frame resolution (32x64 in the lab): no down- or upsampling.

The attribute names of `DanceVAE` (frame_transformation, label_transformation,
Gaussian_Predictor, Decoder_Fusion, Generator) and of the layers inside the blocks are the
template's, so a `state_dict` of the lab's `VAE_Model` loads unchanged.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

# The template writes `nn.LeakyReLU(True)` in Label_Encoder and Gaussian_Predictor: the first
# argument is the negative slope, so these activations are the identity. Kept as written.
TEMPLATE_TRUE_SLOPE = 1.0


class ResidualBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3 -> LeakyReLU, plus the input (a 1x1 projection when the
    channel count changes). (N, in_ch, H, W) -> (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.leaky_relu = nn.LeakyReLU()  # slope 0.01
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        return out + (x if self.skip is None else self.skip(x))


class DepthConv(nn.Module):
    """Depthwise-separable residual conv: 1x1 + LeakyReLU(0.01), depthwise 3x3, 1x1 to out_ch,
    plus the input (a 1x1 adaptor when the channel count changes)."""

    def __init__(self, in_ch: int, out_ch: int, depth_kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, in_ch, 1), nn.LeakyReLU(0.01))
        self.depth_conv = nn.Conv2d(in_ch, in_ch, depth_kernel, padding=depth_kernel // 2,
                                    groups=in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        self.adaptor = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.adaptor is None else self.adaptor(x)
        return self.conv2(self.depth_conv(self.conv1(x))) + identity


class ConvFFN(nn.Module):
    """Gated pointwise feed-forward with expansion 2: a 1x1 conv to 2 x (2 ch) channels split
    into a value and a gate, value * LeakyReLU_0.1(gate), 1x1 back to ch, plus the input."""

    def __init__(self, ch: int, expansion: int = 2):
        super().__init__()
        hidden = ch * expansion
        self.conv = nn.Conv2d(ch, hidden * 2, 1)
        self.conv_out = nn.Conv2d(hidden, ch, 1)
        self.relu = nn.LeakyReLU(negative_slope=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)  # 2 x (N, hidden, H, W)
        return x + self.conv_out(value * self.relu(gate))


class DepthConvBlock(nn.Module):
    """DepthConv (in_ch -> out_ch) followed by a ConvFFN at out_ch."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(DepthConv(in_ch, out_ch), ConvFFN(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class RGB_Encoder(nn.Sequential):
    """Frame (N, 3, H, W) -> features (N, out_chans, H, W): residual and depthwise blocks
    widening out/8 -> out/4 -> out/2, then a 3x3 conv to out_chans."""

    def __init__(self, in_chans: int = 3, out_chans: int = 128):
        c = out_chans
        super().__init__(
            ResidualBlock(in_chans, c // 8), DepthConvBlock(c // 8, c // 8),
            ResidualBlock(c // 8, c // 4), DepthConvBlock(c // 4, c // 4),
            ResidualBlock(c // 4, c // 2), DepthConvBlock(c // 2, c // 2),
            nn.Conv2d(c // 2, c, 3, padding=1))


class Label_Encoder(nn.Sequential):
    """Pose image (N, 3, H, W) -> features (N, out_chans, H, W): reflection-padded 7x7 conv to
    out/2, BatchNorm, the template's identity LeakyReLU, a residual block to out_chans."""

    def __init__(self, in_chans: int = 3, out_chans: int = 32):
        super().__init__(
            nn.ReflectionPad2d(3), nn.Conv2d(in_chans, out_chans // 2, kernel_size=7),
            nn.BatchNorm2d(out_chans // 2), nn.LeakyReLU(TEMPLATE_TRUE_SLOPE),
            ResidualBlock(out_chans // 2, out_chans))

    def forward(self, pose: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """pose (steps * B, 3, H, W), step-major. While training, BatchNorm takes its
        statistics (and updates its running averages) per step, one group of B at a time in
        step order, exactly as when the lab encodes one step per call."""
        pad, conv, norm, act, res = self
        h = conv(pad(pose))  # (steps * B, out/2, H, W)
        if steps > 1 and norm.training:
            if h.shape[0] % steps:
                raise ValueError(f"batch of {h.shape[0]} pose images is not {steps} equal steps")
            h = torch.cat([norm(g) for g in h.split(h.shape[0] // steps)])
        else:
            h = norm(h)
        return res(act(h))


class Gaussian_Predictor(nn.Sequential):
    """Posterior q(z | frame features, pose features): (N, in_chans, H, W) -> z, mu, logvar,
    each (N, out_chans, H, W); z = mu + exp(logvar / 2) * eps (Kingma & Welling 2014, sec. 2.4)."""

    def __init__(self, in_chans: int = 48, out_chans: int = 96):
        c = out_chans
        super().__init__(
            ResidualBlock(in_chans, c // 4), DepthConvBlock(c // 4, c // 4),
            ResidualBlock(c // 4, c // 2), DepthConvBlock(c // 2, c // 2),
            ResidualBlock(c // 2, c), nn.LeakyReLU(TEMPLATE_TRUE_SLOPE),
            nn.Conv2d(c, c * 2, kernel_size=1))

    def forward(self, img: torch.Tensor, label: torch.Tensor,
                eps: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """eps: the standard normal noise (N, out_chans, H, W); drawn when None."""
        params = super().forward(torch.cat([img, label], dim=1))  # (N, 2 out, H, W)
        mu, logvar = params.chunk(2, dim=1)
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


class Decoder_Fusion(nn.Sequential):
    """(previous-frame features, pose features, z) concatenated (N, in_chans, H, W) ->
    (N, out_chans, H, W)."""

    def __init__(self, in_chans: int = 48, out_chans: int = 96):
        c = in_chans
        super().__init__(
            DepthConvBlock(c, c), ResidualBlock(c, c // 4),
            DepthConvBlock(c // 4, c // 2), ResidualBlock(c // 2, c // 2),
            DepthConvBlock(c // 2, out_chans // 2), nn.Conv2d(out_chans // 2, out_chans, 1))

    def forward(self, img: torch.Tensor, label: torch.Tensor,
                parm: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([img, label, parm], dim=1))


class Generator(nn.Sequential):
    """Fused features (N, input_nc, H, W) -> frame (N, 3, H, W), unbounded (the template has no
    output nonlinearity): blocks narrowing input/2 -> /4 -> /8, then a 1x1 conv."""

    def __init__(self, input_nc: int = 192, output_nc: int = 3):
        c = input_nc
        super().__init__(
            DepthConvBlock(c, c), ResidualBlock(c, c // 2),
            DepthConvBlock(c // 2, c // 2), ResidualBlock(c // 2, c // 4),
            DepthConvBlock(c // 4, c // 4), ResidualBlock(c // 4, c // 8),
            DepthConvBlock(c // 8, c // 8), nn.Conv2d(c // 8, output_nc, 1))


def kl_criterion(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over every element, divided by the batch size
    (the lab's `kl_criterion`; Kingma & Welling 2014, appendix B)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch_size


TeacherForcing = Union[bool, torch.Tensor]


class DanceVAE(nn.Module):
    """The lab's `VAE_Model` without its trainer state: the five modules, the training step
    (`forward`) and the autoregressive test protocol (`generate`).

    Defaults are the template's: F_dim 128, L_dim 32, N_dim 12, D_out_dim 192.

    Mode: the template's `VAE_Model.eval` (its validation) shadows `nn.Module.eval`, so the lab
    validates and tests with Label_Encoder's BatchNorm in training mode (batch statistics,
    running averages still updated). `generate` uses whichever mode the caller sets.

    `clamp_feedback`: a generated frame is clamped to [0, 1] before it becomes the next step's
    input (training without teacher forcing, and generation). The lab feeds the raw output
    back (False, its default here); unbounded, a young model's own frames can grow step after
    step until the loss is no longer finite.
    """

    def __init__(self, f_dim: int = 128, l_dim: int = 32, n_dim: int = 12, d_out_dim: int = 192,
                 clamp_feedback: bool = False):
        super().__init__()
        self.n_dim, self.clamp_feedback = n_dim, clamp_feedback
        self.frame_transformation = RGB_Encoder(3, f_dim)
        self.label_transformation = Label_Encoder(3, l_dim)
        self.Gaussian_Predictor = Gaussian_Predictor(f_dim + l_dim, n_dim)
        self.Decoder_Fusion = Decoder_Fusion(f_dim + l_dim + n_dim, d_out_dim)
        self.Generator = Generator(input_nc=d_out_dim, output_nc=3)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per template module, in the template's order."""
        return {name: sum(p.numel() for p in module.parameters())
                for name, module in self.named_children()}

    def forward(self, frames: torch.Tensor, labels: torch.Tensor, tf: TeacherForcing = True,
                noise: Optional[torch.Tensor] = None, chunk: Optional[int] = None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The lab's training step on a batch of clips; returns (mse_sum, kld, steps).

        frames, labels: (B, T, 3, H, W). tf: teacher forcing, one bool for the batch (as the
        lab decides it) or a bool tensor (B,) per clip. noise: the reparameterization noise
        (B, T-1, N_dim, H, W), drawn when None. mse_sum is the sum over the T-1 steps of the
        per-step MSE (mean over B, C, H, W); kld the sum over steps of `kl_criterion`; the
        lab's loss is mse_sum + beta * kld.

        The posterior sees only ground truth, so it runs for `chunk` steps at a time (all
        when None); under teacher forcing so do the decoder and generator, and each frame is
        encoded once as the current frame of step t and the previous frame of step t+1.
        Otherwise steps run in order, each fed the detached prediction of the previous one.
        Smaller chunks trade batching (GPUs) for cache locality (CPUs).
        """
        b, t, c, h, w = frames.shape
        steps = t - 1
        if steps < 1 or labels.shape != frames.shape:
            raise ValueError(f"frames {tuple(frames.shape)}, labels {tuple(labels.shape)}: "
                             "expected equal shapes (B, T >= 2, 3, H, W)")
        chunk = steps if chunk is None else max(1, chunk)
        forced = torch.as_tensor(tf, dtype=torch.bool, device=frames.device).expand(b)  # (B,)
        all_forced, keep = bool(forced.all()), forced.view(b, 1, 1, 1)
        # step-major: (B, T, C, H, W) -> (T, B, C, H, W); a chunk of n steps is flattened to
        # (n * B, C, H, W), step by step
        x, pose = frames.transpose(0, 1), labels.transpose(0, 1)
        if noise is not None:
            noise = noise.transpose(0, 1)  # (S, B, N, H, W)
        prev, sse, kld = x[0], frames.new_zeros(()), frames.new_zeros(())
        for s in range(1, t, chunk):  # steps s .. s + n - 1
            n = min(chunk, t - s)
            cur = x[s:s + n]  # (n, B, C, H, W): targets and posterior inputs
            l_cur = self.label_transformation(pose[s:s + n].reshape(n * b, c, h, w), steps=n)
            if all_forced:  # frames s-1 .. s+n-1 encoded once
                f = self.frame_transformation(x[s - 1:s + n].reshape((n + 1) * b, c, h, w))
                f_prev, f_cur = f[:-b], f[b:]  # (n * B, F, H, W) each
            else:
                f_cur = self.frame_transformation(cur.reshape(n * b, c, h, w))
            eps = None if noise is None else noise[s - 1:s - 1 + n].reshape(n * b, -1, h, w)
            z, mu, logvar = self.Gaussian_Predictor(f_cur, l_cur, eps)  # (n * B, N, H, W) each
            kld = kld + kl_criterion(mu, logvar, b)  # summed over the chunk's steps
            if all_forced:
                pred = self.Generator(self.Decoder_Fusion(f_prev, l_cur, z))  # (n * B, C, H, W)
                sse = sse + (pred.view(n, b, c, h, w) - cur).pow(2).sum()
                continue
            l_cur, z = l_cur.view(n, b, -1, h, w), z.view(n, b, -1, h, w)
            for i in range(n):
                pred = self.Generator(self.Decoder_Fusion(self.frame_transformation(prev),
                                                          l_cur[i], z[i]))  # (B, C, H, W)
                sse = sse + (pred - cur[i]).pow(2).sum()
                prev = torch.where(keep, cur[i], self._feedback(pred.detach()))
        # sum over steps of the per-step mean = total squared error / (B C H W)
        return sse / (b * c * h * w), kld, steps

    @torch.no_grad()
    def latents(self, x: torch.Tensor, cond: torch.Tensor, chunk: int = 64
                ) -> tuple[torch.Tensor, ...]:
        """Posterior q(z_t | x_t, p_t) and prior parameters of steps t = 1..T-1 on the true
        frames x and poses cond (B, T, 3, H, W), as in the teacher-forced training pass:
        (mu, logvar, mu_p, logvar_p), each (T-1, B, N_dim, H, W); the prior N(0, I)'s are
        zeros. Steps are encoded `chunk` at a time."""
        b, t, c, h, w = x.shape
        rows = []
        for s in range(1, t, chunk):
            n = min(chunk, t - s)
            f = self.frame_transformation(x[:, s:s + n].transpose(0, 1).reshape(n * b, c, h, w))
            pose = cond[:, s:s + n].transpose(0, 1).reshape(n * b, c, h, w)
            _, mu, logvar = self.Gaussian_Predictor(f, self.label_transformation(pose, steps=n))
            rows += [mu.view(n, b, -1, h, w), logvar.view(n, b, -1, h, w)]
        mu, logvar = torch.cat(rows[0::2]), torch.cat(rows[1::2])
        return mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar)

    @torch.no_grad()
    def predict(self, x_ctx: torch.Tensor, cond: torch.Tensor, n_future: int,
                x_future: Optional[torch.Tensor] = None, chunk: int = 64) -> torch.Tensor:
        """The evaluation interface shared with SVG (cvae.evaluate): `generate` from the one
        given frame x_ctx (B, 1, 3, H, W) and the poses cond (B, >= 1 + n_future, 3, H, W);
        returns the n_future generated frames (B, n_future, 3, H, W). z ~ N(0, I) (the
        protocol), or, given the true frames x_future (B, n_future, 3, H, W), drawn from the
        posterior q(z_t | x_t, p_t) on them (what z can carry at most; the frames fed back are
        still the model's own)."""
        b, n_given, c, h, w = x_ctx.shape
        if n_given != 1:
            raise ValueError(f"{n_given} given frames: the dance protocol gives the first only")
        labels = cond[:, :1 + n_future]
        z = None
        if x_future is not None:  # posterior draws (reparameterized), step-major -> batch-major
            mu, logvar, _, _ = self.latents(torch.cat([x_ctx, x_future], 1), labels, chunk)
            z = (mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)).transpose(0, 1)
        return self.generate(x_ctx[:, 0], labels, z=z, chunk=chunk)[:, 1:]

    @torch.no_grad()
    def generate(self, first_frame: torch.Tensor, labels: torch.Tensor,
                 z: Optional[torch.Tensor] = None, chunk: int = 64) -> torch.Tensor:
        """The lab's test protocol: frames (B, T, 3, H, W) from the given first frame
        (B, 3, H, W) and the poses labels (B, T, 3, H, W); frame 0 is the given one and frame t
        is generated from frame t-1 (its own output), pose t and z_t. z: (B, T-1, N_dim, H, W),
        N(0, I) draws when None. Outputs are not clamped (as in the lab; see `clamp_feedback` for
        what is fed back). Pose images are encoded `chunk` steps at a time."""
        b, t, c, h, w = labels.shape
        out = labels.new_empty(b, t, c, h, w)
        out[:, 0] = first_frame
        prev = first_frame
        for start in range(1, t, chunk):
            n = min(chunk, t - start)
            pose = labels[:, start:start + n].transpose(0, 1).reshape(n * b, c, h, w)
            l_chunk = self.label_transformation(pose, steps=n).view(n, b, -1, h, w)
            for i in range(n):
                step = start + i
                z_t = (labels.new_empty(b, self.n_dim, h, w).normal_() if z is None
                       else z[:, step - 1])
                out[:, step] = self.Generator(self.Decoder_Fusion(
                    self.frame_transformation(prev), l_chunk[i], z_t))
                prev = self._feedback(out[:, step])
        return out

    def _feedback(self, frame: torch.Tensor) -> torch.Tensor:
        """A generated frame as the next step's input (clamped with `clamp_feedback`)."""
        return frame.clamp(0.0, 1.0) if self.clamp_feedback else frame
