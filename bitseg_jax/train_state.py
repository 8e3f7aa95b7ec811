"""Train state, optimizer, learning-rate schedule and EMA (SPEC sections 9.1 and 9.2).

`TrainState` holds only arrays (step, raw params, EMA params, optimizer state), so it is a plain
pytree that jit, sharding and orbax handle without special cases. The optimizer (`create_optimizer`)
and the model config are not stored in it: the train step rebuilds the same `optax` transformation
from the config and closes over it.
"""

import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bitseg_jax import models

# SPEC 9.2: the two warm-up shapes, as functions of the warm-up fraction in [0, 1].
WARMUP_TYPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda frac: frac,
    "cosine": lambda frac: 0.5 * (1.0 + jnp.cos(jnp.pi * (1.0 - frac))),
}

# SPEC 9.2: the two tail-decay shapes, as functions of the decay fraction f in [0, 1].
DECAY_TYPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "cosine": lambda f: 0.5 * (1.0 + jnp.cos(jnp.pi * f)),
    "linear": lambda f: 1.0 - f,
}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; every field is a pytree of arrays.

    Attributes:
      step: int32 scalar, the number of updates taken so far (0 before the first update).
      params: the raw model parameters (nested dict of float32 arrays, `models.init_unet`).
      ema_params: exponential moving average of `params` (SPEC 9.1 step 8), same structure.
      opt_state: the state of `create_optimizer(config)` (clipping + AdamW moments and count).
    """

    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"Unknown {what} {name!r}; expected one of {sorted(table)}.") from None


def learning_rate_schedule(
    optim_config: ml_collections.ConfigDict, total_steps: int
) -> Callable[[jax.Array], jax.Array]:
    """SPEC 9.2: lr(step) = lr · warm(step) · decay(step), with step 1 the first update.

    warm(step) = clip(step / warmup_steps, 0, 1) (linear, or its cosine shape), and
    decay(step) = cos-or-linear(f) with f = clip((step - (total_steps - decay_steps)) /
    decay_steps, 0, 1), so the LR is flat between warm-up and the last `decay_steps` steps
    and reaches 0 at `total_steps`. With the defaults lr(1) = 1e-7 and lr(1000) = 1e-4.

    Args:
      optim_config: the `config.optim` group (lr, warmup_steps, warmup_type, decay_steps,
        decay_type).
      total_steps: the run length (`config.total_steps`).

    Returns:
      A jit-safe function of the 1-based update number (int scalar) -> float32 scalar LR.

    Raises:
      KeyError: for an unknown `warmup_type` or `decay_type`.
      ValueError: for negative step counts.
    """
    warmup_fn = _lookup(WARMUP_TYPES, optim_config.warmup_type, "optim.warmup_type")
    decay_fn = _lookup(DECAY_TYPES, optim_config.decay_type, "optim.decay_type")
    warmup_steps = int(optim_config.warmup_steps)
    decay_steps = int(optim_config.decay_steps)
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"optim.warmup_steps ({warmup_steps}) and optim.decay_steps ({decay_steps}) "
            "must be >= 0."
        )
    base_lr = float(optim_config.lr)
    decay_start = total_steps - decay_steps

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        # A zero-length phase is "already finished" (factor 1), never a division by zero.
        warm = jnp.clip(step / max(warmup_steps, 1), 0.0, 1.0) if warmup_steps else 1.0
        frac = jnp.clip((step - decay_start) / max(decay_steps, 1), 0.0, 1.0)
        decay = decay_fn(frac) if decay_steps else 1.0
        return base_lr * warmup_fn(jnp.asarray(warm, jnp.float32)) * decay

    return schedule


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SPEC 9.1 steps 6-7: global-norm clipping, then AdamW with the SPEC 9.2 schedule.

    optax counts updates from 0, the reference from 1, hence the `count + 1` (lr(1) = 1e-7).
    optax's clipping scales by `clip / max(norm, clip)`; PyTorch's divides by `norm + 1e-6`,
    a relative difference of 1e-6 that we do not reproduce.

    Args:
      config: the full config (`config.optim` and `config.total_steps` are read).

    Returns:
      The `optax` transformation; its state goes into `TrainState.opt_state`.
    """
    o = config.optim
    schedule = learning_rate_schedule(o, config.total_steps)
    chain = []
    if o.grad_clip and o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain.append(
        optax.adamw(
            learning_rate=lambda count: schedule(count + 1),
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
    )
    return optax.chain(*chain)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Initialises params (`models.init_unet`), EMA (= the initial params) and AdamW state.

    Pure and jit-safe: `train.py` runs it under `jax.eval_shape` (restore target) and under
    `jax.jit(..., out_shardings=...)` (so the state is created directly in its sharding).

    Args:
      config: the full config.
      rng: the init key.

    Returns:
      A `TrainState` with step 0.
    """
    params = models.init_unet(config.model, rng)
    tx = create_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        # SPEC 9.1 step 8: EMA starts at the initial params, no warm-up or bias correction.
        # A copy, not an alias: the train step donates the state buffers.
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def ema_update(ema_params: dict, params: dict, rate: float) -> dict:
    """SPEC 9.1 step 8: ema <- rate · ema + (1 - rate) · params (leaf-wise)."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - rate)


def global_norm(tree) -> jax.Array:
    """Global L2 norm of a tree (`train/param_norm`, `train/grad_norm`), float32 scalar."""
    return optax.tree.norm(tree)


def num_params(params: dict) -> int:
    """Total number of parameters of a tree (concrete or abstract)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
