"""RDN encoder (Zhang et al. 2018, "Residual Dense Network") as LIIF uses it: no upsampler.

The path, as in the authors' ``models/rdn.py`` (from EDSR-PyTorch) with ``no_upsampling``:

    f1 = SFENet1(x)                  3x3, 3 -> G0
    x  = SFENet2(f1)                 3x3, G0 -> G0
    D residual dense blocks; each:   C times: concat(features, relu(3x3 conv(features)) -> G),
                                     then LFF 1x1 (G0 + C*G) -> G0, plus the block's input
    GFF: 1x1 over concat(all D block outputs) (D*G0 -> G0), then 3x3 G0 -> G0; plus f1

Config A is (D, C, G) = (20, 6, 32), config B (16, 8, 64) (the released ``rdn-liif.pth``).

Two choices that are ours, not the original's:

- The GFF 1x1 convolution is computed as a running sum of each block output times its slice
  of the kernel, as each block finishes, instead of one 1x1 over the D*G0-channel
  concatenation. Same parameters, same result up to float32 summation order (well inside the
  1e-4 feature bound), but the D block outputs never need to be alive together: peak memory
  per pixel drops from ~D*G0 channels to about one block's concatenation, so tiles can be
  larger.
- ``mask``: the same scheme as ``EDSR`` (see ``edsr.py``): everything outside the valid region
  is zeroed after every convolution, so each convolution sees exactly the zero padding it
  would see on the image alone and bucketed crops give the unpadded image's features.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from liif_jax.models.edsr import _masked

# (D blocks, C convolutions per block, G growth) of the original's two configurations.
RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}


class ResidualDenseBlock(nn.Module):
    """C densely connected 3x3 conv + ReLU layers, 1x1 local feature fusion, local residual."""

    growth0: int  # G0: block input and output channels
    growth: int  # G: channels each convolution adds
    n_layers: int  # C

    @nn.compact
    def __call__(self, x, mask=None):
        features = x
        for c in range(self.n_layers):
            out = nn.Conv(self.growth, (3, 3), padding=1, name=f"conv_{c}")(features)
            features = jnp.concatenate([features, _masked(nn.relu(out), mask)], axis=-1)
        fused = nn.Conv(self.growth0, (1, 1), padding=0, name="LFF")(features)
        return _masked(fused, mask) + x


class ConcatFusion1x1(nn.Module):
    """A 1x1 convolution (``n_parts * part_channels`` -> ``features``) over the channel
    concatenation of ``n_parts`` maps, applied one part at a time and accumulated.

    Call it once per part, in order: ``acc = fusion(part, i, acc)``. Its parameters are those
    of a plain 1x1 ``nn.Conv`` over the concatenation (kernel (1, 1, n_parts*part_channels,
    features), bias), so checkpoints map onto it unchanged."""

    features: int
    n_parts: int
    part_channels: int

    @nn.compact
    def __call__(self, part, index: int, acc=None):
        in_channels = self.n_parts * self.part_channels
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (1, 1, in_channels, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        lo = index * self.part_channels
        weight = kernel[0, 0, lo:lo + self.part_channels]
        out = jax.lax.dot_general(part, weight, (((part.ndim - 1,), (0,)), ((), ())))
        if acc is None:
            return out + bias
        return acc + out


class RDN(nn.Module):
    """SFENet1 -> SFENet2 -> D dense blocks -> global fusion (1x1, 3x3), plus SFENet1's output."""

    n_blocks: int = 16  # D
    n_layers: int = 8  # C
    growth: int = 64  # G
    growth0: int = 64  # G0

    @property
    def out_dim(self) -> int:
        return self.growth0

    @property
    def n_convs(self) -> int:
        """3x3 convolutions on the path (the 1x1 fusions add no receptive field): SFENet1,
        SFENet2, D*C in the blocks and GFF's 3x3. Config B: 2 + 16*8 + 1 = 131."""
        return 2 + self.n_blocks * self.n_layers + 1

    @property
    def peak_activation_channels(self) -> int:
        """float32 channels per crop pixel live at the encoder's peak; the engine multiplies
        it by the crop area. Inside a block the growing concatenation (G0 + C*G channels at
        the end) exists twice while it is extended, beside the block input, SFENet1's output,
        the GFF accumulator and the convolution's scratch. Calibrated by peak-RSS
        measurements on CPU (benchmarks/bench_inference.py --memory-rdn); rounded up, since
        overestimating is the safe side."""
        block_concat = self.growth0 + self.n_layers * self.growth
        return 3 * block_concat + 6 * self.growth0

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask=None) -> jnp.ndarray:
        g0 = self.growth0
        f1 = _masked(nn.Conv(g0, (3, 3), padding=1, name="SFENet1")(_masked(x, mask)), mask)
        x = _masked(nn.Conv(g0, (3, 3), padding=1, name="SFENet2")(f1), mask)
        fusion = ConcatFusion1x1(g0, self.n_blocks, g0, name="GFF_0")
        acc = None
        for i in range(self.n_blocks):
            x = ResidualDenseBlock(g0, self.growth, self.n_layers, name=f"RDB_{i}")(x, mask)
            acc = fusion(x, i, acc)
        x = _masked(acc, mask)
        x = _masked(nn.Conv(g0, (3, 3), padding=1, name="GFF_1")(x), mask)
        return x + f1
