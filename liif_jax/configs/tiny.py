"""A tiny LIIF for tests and CPU experiments: same recipe and code paths, ~4.7k parameters.

EDSR-baseline with 2 blocks of 8 features, an MLP of [16, 16], 16x16 LR crops, 256 queries
per crop. The learning rate is 1e-3 (not the paper's 1e-4) so a few dozen steps visibly
lower the loss. One loader thread: a batch is about 2 ms of mostly GIL-held work, and a
second thread only waits for the GIL (``benchmarks/bench_train.py --configs tiny``).
"""

from liif_jax.configs import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model={"name": "liif", "args": {
            "encoder_spec": {"name": "edsr-baseline",
                             "args": {"n_resblocks": 2, "n_feats": 8, "no_upsampling": True}},
            "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}},
        }},
        inp_size=16, sample_q=256, repeat=1, batch_size=4, lr=1e-3,
        lr_decay_steps=(500, 1000), total_steps=1500,
        log_every=10, checkpoint_every=50, keep_checkpoints=3, val_every=100,
        val_scales=(2.0, 4.0), val_max_images=4, loader_threads=1, prefetch_batches=2,
    )
