"""RDN encoder (Zhang et al. 2018, "Residual Dense Network") as LIIF uses it: no upsampler.

The path, as in the authors' ``models/rdn.py`` (from EDSR-PyTorch) with ``no_upsampling``:

    f1 = SFENet1(x)                  3x3, 3 -> G0
    x  = SFENet2(f1)                 3x3, G0 -> G0
    D residual dense blocks; each:   C times: concat(features, relu(3x3 conv(features)) -> G),
                                     then LFF 1x1 (G0 + C*G) -> G0, plus the block's input
    GFF: 1x1 over concat(all D block outputs) (D*G0 -> G0), then 3x3 G0 -> G0; plus f1

Config A is (D, C, G) = (20, 6, 32), config B (16, 8, 64) (the released ``rdn-liif.pth``).

Three choices that are ours, not the original's (none changes the parameters or the result
beyond float32 summation order, well inside the 1e-4 feature bound):

- The D blocks run as one ``lax.scan`` over their stacked parameters (every block has the same
  shapes). XLA then keeps one block's working set alive, not all D blocks' outputs: on CPU an
  unrolled chain let XLA fuse the global fusion's additions into one at the end, holding every
  block output until then. It also compiles one block instead of D.
- The GFF 1x1 convolution is a running sum, inside that loop, of each block output times its
  slice of the kernel, instead of one 1x1 over the D*G0-channel concatenation: the D block
  outputs never need to be alive together.
- ``mask``: the same scheme as ``EDSR`` (see ``edsr.py``): everything outside the valid region
  is zeroed after every convolution, so each convolution sees exactly the zero padding it
  would see on the image alone and bucketed crops give the unpadded image's features.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from liif_jax.models.edsr import _masked


class ConvParams(nn.Module):
    """Holds one convolution's parameters (kernel HWIO, bias) under its own name, as
    ``nn.Conv`` would, for code that applies them itself (the scanned blocks)."""

    kernel_size: int
    in_features: int
    features: int

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, self.in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return kernel, bias


class DenseBlockParams(nn.Module):
    """The parameters of one residual dense block: conv_0..conv_{C-1} (3x3, growing inputs)
    and LFF (1x1); names as in our weight files (``RDB_3/conv_5/kernel``)."""

    growth0: int
    growth: int
    n_layers: int

    @nn.compact
    def __call__(self):
        convs = [ConvParams(3, self.growth0 + c * self.growth, self.growth, name=f"conv_{c}")()
                 for c in range(self.n_layers)]
        lff = ConvParams(1, self.growth0 + self.n_layers * self.growth, self.growth0, name="LFF")()
        return convs, lff


def _conv(x, kernel, bias):
    """Same-padded stride-1 convolution NHWC x HWIO, as ``nn.Conv`` computes it."""
    pad = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _dense_block(x, convs, lff, mask):
    """C times: append relu(3x3 conv of everything so far); 1x1 fusion; plus the input."""
    features = x
    for kernel, bias in convs:
        features = jnp.concatenate([features, _masked(nn.relu(_conv(features, kernel, bias)), mask)],
                                   axis=-1)
    return _masked(_conv(features, *lff), mask) + x


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
        the end) exists about twice while it is extended, beside the block input, SFENet1's
        output, the GFF accumulator and the convolutions' scratch. Measured (peak-RSS slope
        over crop area, benchmarks/encoder_memory.py, CPU): 1802 for config B, 1057 for A,
        i.e. ~2.33 (G0 + C*G) + ~7.2 G0; this states 2.5 (G0 + C*G) + 8 G0 = 1952 and 1152,
        8-9% above (overestimating is the safe side, but RDN-B's smallest exact tile is a
        384-pixel crop, so a generous margin would put it over the 2 GB default budget)."""
        return 5 * (self.growth0 + self.n_layers * self.growth) // 2 + 8 * self.growth0

    @property
    def peak_fixed_bytes(self) -> int:
        """Bytes at the encoder's peak that do not grow with the crop: the scan's stacked copy
        of the block parameters (85 MB for config B, 21 MB for A) plus a quarter for XLA's
        scratch around it (measured constant part of the peak: ~97 MB for B, ~22 MB for A)."""
        g0, g, c = self.growth0, self.growth, self.n_layers
        per_block = sum(9 * (g0 + i * g) * g + g for i in range(c)) + (g0 + c * g) * g0 + g0
        return 5 * 4 * self.n_blocks * per_block // 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask=None) -> jnp.ndarray:
        g0, n_blocks = self.growth0, self.n_blocks
        f1 = _masked(nn.Conv(g0, (3, 3), padding=1, name="SFENet1")(_masked(x, mask)), mask)
        x = _masked(nn.Conv(g0, (3, 3), padding=1, name="SFENet2")(f1), mask)
        blocks = [DenseBlockParams(g0, self.growth, self.n_layers, name=f"RDB_{i}")()
                  for i in range(n_blocks)]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
        gff_kernel, gff_bias = ConvParams(1, n_blocks * g0, g0, name="GFF_0")()
        gff_slices = gff_kernel.reshape(n_blocks, g0, g0)  # block i's rows of the 1x1 kernel

        def step(carry, block):
            x, acc = carry
            (convs, lff), gff_slice = block
            x = _dense_block(x, convs, lff, mask)
            return (x, acc + jnp.einsum("bhwc,cd->bhwd", x, gff_slice)), None

        acc = jnp.broadcast_to(gff_bias, x.shape).astype(x.dtype)
        (_, acc), _ = jax.lax.scan(step, (x, acc), (stacked, gff_slices))
        x = _masked(acc, mask)
        x = _masked(nn.Conv(g0, (3, 3), padding=1, name="GFF_1")(x), mask)
        return x + f1
