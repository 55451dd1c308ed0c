"""Training configs as plain Python: a ``TrainConfig`` dataclass, two built-in ones chosen by
name (``paper``, ``tiny``) and any ``.py`` file that defines ``get_config()``.

No registry and no YAML: a config is a value you can read, diff and ``dataclasses.replace``.
A file config usually starts from a built-in one::

    # my_config.py
    import dataclasses
    from liif_jax.configs import paper

    def get_config():
        return dataclasses.replace(paper.get_config(), batch_size=8, total_steps=50_000)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

from liif_jax.errors import RequestError

BUILT_IN = ("paper", "rdn", "tiny")


def _edsr_baseline_liif() -> dict:
    return {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}},
    }}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the paper's recipe
    (``train_edsr-baseline-liif.yaml`` of the original): EDSR-baseline encoder + 4x256 MLP,
    48x48 LR crops at scales U(1, 4), 2304 queries per crop, batch 16, Adam lr 1e-4 halved at
    200k/400k/600k/800k of 1M steps (the original's epochs 200..800 of 1000 steps each)."""

    model: dict = dataclasses.field(default_factory=_edsr_baseline_liif)  # a LIIF spec
    # data (liif_jax.train.data.ImplicitDownsampled)
    inp_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304
    augment: bool = True
    repeat: int = 20  # items per image per epoch (DIV2K: 800 images x 20 = 1000 steps of 16)
    cache: str = "memory"  # "memory" (decode each image once) or "none"
    # optimisation
    batch_size: int = 16  # global, split over all devices of all processes
    lr: float = 1e-4
    lr_decay_steps: tuple = (200_000, 400_000, 600_000, 800_000)
    lr_decay_factor: float = 0.5
    total_steps: int = 1_000_000
    seed: int = 0
    # bookkeeping
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    val_every: int = 10_000
    val_scales: tuple = (2.0, 3.0, 4.0)
    val_max_images: int = 10
    # host data loading
    loader_threads: int = 4  # threads per loader process, at most one per core (pipeline.host_threads)
    prefetch_batches: int = 4
    loader: str = "grain"  # "grain" (liif_jax.train.pipeline; threads if grain is absent) or "threads"
    loader_workers: int = -1  # grain worker processes; -1: one per core beyond two, at most 8

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: (tuple(v) if isinstance(v, list) and k != "model" else v) for k, v in raw.items() if k in known}
        return cls(**raw)

    def validate(self) -> "TrainConfig":
        from liif_jax.models.spec import normalize_spec

        normalize_spec(self.model)
        positive = ("inp_size", "sample_q", "repeat", "batch_size", "total_steps", "log_every",
                    "checkpoint_every", "keep_checkpoints", "val_every", "loader_threads")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(f"config: {name} must be a whole number >= 1, got {value!r}")
        if not 1 <= self.scale_min <= self.scale_max:
            raise RequestError(f"config: need 1 <= scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if not self.lr > 0:
            raise RequestError(f"config: lr must be > 0, got {self.lr}")
        if self.loader not in ("grain", "threads"):
            raise RequestError(f"config: loader must be 'grain' or 'threads', got {self.loader!r}")
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) or self.loader_workers < -1:
            raise RequestError(f"config: loader_workers must be -1 (automatic) or >= 0, got {self.loader_workers!r}")
        if self.cache not in ("memory", "none"):
            raise RequestError(f"config: cache must be 'memory' or 'none', got {self.cache!r}")
        return self


def load_config(name_or_path: str) -> TrainConfig:
    """A built-in config by name, or ``get_config()`` of a Python file."""
    if name_or_path in BUILT_IN:
        module = importlib.import_module(f"liif_jax.configs.{name_or_path}")
        where = name_or_path
    else:
        path = Path(name_or_path)
        if path.suffix != ".py" or not path.is_file():
            raise RequestError(f"--config must be one of {', '.join(BUILT_IN)} or a .py file "
                               f"defining get_config(); got {name_or_path!r}")
        spec = importlib.util.spec_from_file_location(f"liif_jax_user_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: report it in one line
            raise RequestError(f"config {path.name} failed to load: {type(exc).__name__}: {exc}") from None
        where = path.name
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise RequestError(f"config {where} has no get_config() function")
    config = get_config()
    if not isinstance(config, TrainConfig):
        raise RequestError(f"config {where}: get_config() must return liif_jax.configs.TrainConfig, "
                           f"got {type(config).__name__}")
    return config.validate()
