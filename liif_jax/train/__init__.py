"""Training LIIF in JAX: the loss and the optax step (``step``). Data, the training loop,
checkpoints and configs come with the training issue."""
