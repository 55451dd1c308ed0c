"""EDSR encoder (Lim et al. 2017) as LIIF uses it: no upsampler, no mean shift.

The checkpoint carries ``sub_mean``/``add_mean`` MeanShift weights, but the original LIIF
encoder's forward has them commented out, so they are not applied (and not converted).
Layout is NHWC; convolutions are 3x3 with zero padding 1, like the original's default_conv.

``mask`` (optional, (B, H, W, 1) of 0/1) marks the real image inside a larger zero-padded
canvas. Zeroing everything outside it after every convolution makes each convolution see
exactly the zero padding it would see on the image alone, so the features inside the mask
equal those of the unpadded image. That lets one compiled shape serve many image sizes.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def _masked(x, mask):
    return x if mask is None else x * mask.astype(x.dtype)


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, scaled by ``res_scale``, plus the input."""

    n_feats: int
    res_scale: float = 1.0

    @nn.compact
    def __call__(self, x, mask=None):
        res = _masked(nn.relu(nn.Conv(self.n_feats, (3, 3), padding=1, name="conv_0")(x)), mask)
        res = nn.Conv(self.n_feats, (3, 3), padding=1, name="conv_1")(res)
        if self.res_scale != 1:
            res = res * self.res_scale
        return _masked(res, mask) + x


class EDSR(nn.Module):
    """head conv -> n_resblocks ResBlocks -> body conv, with a global skip over the body."""

    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0

    @property
    def out_dim(self) -> int:
        return self.n_feats

    @property
    def n_convs(self) -> int:
        """Number of 3x3 convolutions on the path: sets the receptive field (1 px each)."""
        return 2 + 2 * self.n_resblocks

    @property
    def peak_activation_channels(self) -> int:
        """float32 channels per crop pixel live at the encoder's peak (a few activations and
        the convolutions' scratch); the engine's memory estimate multiplies it by the crop
        area. Measured (benchmarks/encoder_memory.py --model edsr-baseline, CPU): 271-297
        channels for crops of 256-768 pixels, i.e. ~4.6 n_feats; this states 5 n_feats
        (overestimating is the safe side)."""
        return 5 * self.n_feats

    @property
    def peak_fixed_bytes(self) -> int:
        """Bytes at the encoder's peak that do not grow with the crop (beyond the parameters,
        which the runtime reserve covers): none for EDSR."""
        return 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask=None) -> jnp.ndarray:
        x = _masked(nn.Conv(self.n_feats, (3, 3), padding=1, name="head")(_masked(x, mask)), mask)
        res = x
        for i in range(self.n_resblocks):
            res = ResBlock(self.n_feats, self.res_scale, name=f"body_{i}")(res, mask)
        res = _masked(nn.Conv(self.n_feats, (3, 3), padding=1, name="body_conv")(res), mask)
        return res + x
