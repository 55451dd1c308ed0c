"""EDSR encoder (Lim et al. 2017) as LIIF uses it: no upsampler, no mean shift.

The checkpoint carries ``sub_mean``/``add_mean`` MeanShift weights, but the original LIIF
encoder's forward has them commented out, so they are not applied (and not converted).
Layout is NHWC; convolutions are 3x3 with zero padding 1, like the original's default_conv.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, scaled by ``res_scale``, plus the input."""

    n_feats: int
    res_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        res = nn.Conv(self.n_feats, (3, 3), padding=1, name="conv_0")(x)
        res = nn.relu(res)
        res = nn.Conv(self.n_feats, (3, 3), padding=1, name="conv_1")(res)
        if self.res_scale != 1:
            res = res * self.res_scale
        return res + x


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

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Conv(self.n_feats, (3, 3), padding=1, name="head")(x)
        res = x
        for i in range(self.n_resblocks):
            res = ResBlock(self.n_feats, self.res_scale, name=f"body_{i}")(res)
        res = nn.Conv(self.n_feats, (3, 3), padding=1, name="body_conv")(res)
        return res + x
