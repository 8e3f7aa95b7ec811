"""Continuous-time Gaussian diffusion on analog bits: pure JAX functions (SPEC sections 5 and 7).

This file owns the noise schedule (base schedules, input scaling, the affine logSNR-range remap),
alpha/sigma, loss weights, training-time t samplers, the forward process, the conversions between
x / eps / v predictions, the final activations, the training loss and the DDPM/DDIM sampler with
classifier-free guidance. Everything is a pure function of arrays plus a small frozen
`DiffusionConfig` (or plain Python floats and strings): no framework state, no ConfigDict.

Conventions: t in [0, 1] with t = 0 data and t = 1 noise; `t` and `logsnr` have shape [B];
diffusion tensors ("bits") are NHWC `[B, H, W, C]`; the valid/loss masks are `[B, H, W]` bool.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
# denoise_fn(x_t [B, H, W, C], t [B], image [B, H, W, 3]) -> out [B, H, W, C] (after the final
# activation; see `training_loss` and `sample`).
DenoiseFn = Callable[[Array, Array, Array], Array]


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    """Returns table[name] or raises a KeyError that lists the valid choices."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise KeyError(f"Unknown {what} {name!r}; expected one of {sorted(table)}.") from None


# ------------------------------------------------------------------------------------------------
# Schedules (SPEC 5.1).
# ------------------------------------------------------------------------------------------------


def gamma_cosine(t: Array) -> tuple[Array, Array]:
    """SPEC 5.1 base schedule `cosine`: gamma0 = cos^2(pi t / 2), logSNR0 = -2 ln tan(pi t / 2).

    cos(pi t / 2) is written as sin(pi (1 - t) / 2) so that gamma0 and 1 - gamma0 = sin^2(pi t / 2)
    are both accurate near their zeros and exactly 0, with zero slope, at t = 1 and t = 0 (float32
    cos(pi / 2) is 4e-8 and would leave a spurious slope at t = 1).

    Args:
      t: float array, any shape, in [0, 1].

    Returns:
      (gamma0, 1 - gamma0), each the shape of t.
    """
    half_pi = 0.5 * math.pi
    return jnp.square(jnp.sin(half_pi * (1.0 - t))), jnp.square(jnp.sin(half_pi * t))


def gamma_linear(t: Array) -> tuple[Array, Array]:
    """SPEC 5.1 base schedule `linear`: gamma0 = sigmoid(-ln(expm1(1e-4 + 10 t^2))).

    logSNR0 = -ln(expm1(1e-4 + 10 t^2)).

    Args:
      t: float array, any shape, in [0, 1].

    Returns:
      (gamma0, 1 - gamma0), each the shape of t.
    """
    u = jnp.expm1(1e-4 + 10.0 * jnp.square(t))
    return 1.0 / (1.0 + u), u / (1.0 + u)


def gamma_linear_simple(t: Array) -> tuple[Array, Array]:
    """SPEC 5.1 base schedule `linear_simple`: gamma0 = 1 - t, logSNR0 = ln((1 - t) / t).

    Args:
      t: float array, any shape, in [0, 1].

    Returns:
      (gamma0, 1 - gamma0) = (1 - t, t).
    """
    return 1.0 - t, t


# Base schedules return the pair (gamma0, 1 - gamma0) rather than
# logSNR0 = ln(gamma0 / (1 - gamma0)):
# logSNR0 is +-inf at the endpoints, where autodiff through it gives NaN, while both halves of the
# pair are finite and smooth, each computed without cancellation.
SCHEDULES: dict[str, Callable[[Array], tuple[Array, Array]]] = {
    "cosine": gamma_cosine,
    "linear": gamma_linear,
    "linear_simple": gamma_linear_simple,
}


def _log_of_pair(p: Array, q: Array) -> Array:
    """ln(p) for p = 1 - q, using log1p(-q) when p is near 1 (full relative accuracy)."""
    small = p < 0.5
    # The inner `where`s keep the unused branch finite, so gradients stay NaN-free.
    return jnp.where(small, jnp.log(jnp.where(small, p, 1.0)), jnp.log1p(-jnp.where(small, 0.0, q)))


# Schedule settings are Python values and static under jit: one compilation per setting.
_SCHEDULE_ARGS = ("schedule", "input_scale", "logsnr_min", "logsnr_max")


def _check_schedule_args(input_scale: float, logsnr_min: float, logsnr_max: float) -> None:
    if not input_scale > 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale!r}.")
    if not logsnr_min < logsnr_max:
        raise ValueError(
            f"logsnr_min must be < logsnr_max, got logsnr_min={logsnr_min!r}, "
            f"logsnr_max={logsnr_max!r}."
        )
    # sigmoid(+-80) is the edge of float32; beyond it gamma underflows to 0 and lambda to -inf.
    if max(abs(logsnr_min), abs(logsnr_max)) > 80:
        raise ValueError(
            f"logsnr_min/logsnr_max must lie in [-80, 80] for float32, got {logsnr_min!r}, "
            f"{logsnr_max!r}."
        )


@functools.partial(jax.jit, static_argnames=_SCHEDULE_ARGS)
def gamma_pair(
    t: Array,
    *,
    schedule: str = "cosine",
    input_scale: float = 0.1,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> tuple[Array, Array]:
    """SPEC 5.1: gamma(t) and 1 - gamma(t) after input scaling and the logSNR-range remap.

    Input scaling by b is the logSNR shift lambda_b = lambda0 + 2 ln b (SPEC A1), applied as
    gamma_b = b^2 gamma0 / (b^2 gamma0 + 1 - gamma0); skipped when |b - 1| < 1e-9 as in the
    reference. The range remap is the affine map of gamma_b that sends gamma_b(0) to
    sigmoid(logsnr_max) and gamma_b(1) to sigmoid(logsnr_min) (SPEC A2, not a clip):
        gamma     = sigmoid(l_min)  + s * (gamma_b(t) - gamma_b(1))
        1 - gamma = sigmoid(-l_max) + s * ((1 - gamma_b(t)) - (1 - gamma_b(0)))
        s = (sigmoid(l_max) - sigmoid(l_min)) / (gamma_b(0) - gamma_b(1)).
    For cosine, gamma_b(0) = 1 and gamma_b(1) = 0 exactly, so both halves are formed without
    cancellation (the stable float32 form of SPEC 5.1) and gamma's derivative is exactly 0 at t = 0
    and t = 1. For `linear`, gamma_b(0) < 1 and the subtraction of 1 - gamma_b(0) costs float32
    digits for t < ~1e-4 (lambda off by up to ~0.4 at t = 1e-6); use float64 there if it matters.

    Args:
      t: float array, any shape, in [0, 1].
      schedule: "cosine" | "linear" | "linear_simple".
      input_scale: b > 0 (Python float, static).
      logsnr_min, logsnr_max: the logSNR at t = 1 and t = 0 (Python floats, static).

    Returns:
      (gamma, one_minus_gamma), each the shape of t, float32.
    """
    base = _lookup(SCHEDULES, schedule, "schedule")
    _check_schedule_args(input_scale, logsnr_min, logsnr_max)

    def scaled(tt):
        g0, h0 = base(tt)
        if abs(input_scale - 1.0) < 1e-9:
            return g0, h0
        # Multiplying the odds gamma0 / (1 - gamma0) by b^2 is the logSNR shift of 2 ln b.
        b2 = input_scale * input_scale
        denom = b2 * g0 + h0
        return b2 * g0 / denom, h0 / denom

    # The endpoints go through the same vectorised computation as t, so that t = 0 and t = 1 give
    # exactly the endpoint values (XLA may evaluate a separate scalar path differently by an ulp).
    t = jnp.asarray(t, jnp.float32)
    g, h = scaled(jnp.concatenate([t.reshape(-1), jnp.array([0.0, 1.0], jnp.float32)]))
    g_at0, h_at0, g_at1 = g[-2], h[-2], g[-1]
    g, h = g[:-2].reshape(t.shape), h[:-2].reshape(t.shape)
    s = (jax.nn.sigmoid(logsnr_max) - jax.nn.sigmoid(logsnr_min)) / (g_at0 - g_at1)
    gamma = jax.nn.sigmoid(logsnr_min) + s * (g - g_at1)
    one_minus_gamma = jax.nn.sigmoid(-logsnr_max) + s * (h - h_at0)
    return gamma, one_minus_gamma


@functools.partial(jax.jit, static_argnames=_SCHEDULE_ARGS)
def logsnr(
    t: Array,
    *,
    schedule: str = "cosine",
    input_scale: float = 0.1,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> Array:
    """SPEC 5.1: the input-scaled, range-remapped logSNR lambda(t) = ln(gamma / (1 - gamma)).

    Args:
      t: float array, any shape, in [0, 1].
      schedule, input_scale, logsnr_min, logsnr_max: see `gamma_pair`.

    Returns:
      lambda(t), same shape, float32; lambda(0) = logsnr_max and lambda(1) = logsnr_min.
    """
    g, h = gamma_pair(
        t,
        schedule=schedule,
        input_scale=input_scale,
        logsnr_min=logsnr_min,
        logsnr_max=logsnr_max,
    )
    return _log_of_pair(g, h) - _log_of_pair(h, g)


@functools.partial(jax.jit, static_argnames=_SCHEDULE_ARGS)
def neg_dlogsnr_dt(
    t: Array,
    *,
    schedule: str = "cosine",
    input_scale: float = 0.1,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> Array:
    """SPEC 5.5: -d lambda / dt of the scaled, remapped schedule, by forward-mode autodiff.

    For cosine this is 2 pi / sin(pi t) away from the endpoints and exactly 0 at t = 0 and t = 1.

    Args:
      t: float array, any shape, in [0, 1].
      schedule, input_scale, logsnr_min, logsnr_max: see `gamma_pair`.

    Returns:
      -lambda'(t), same shape, float32 (>= 0).
    """
    fn = functools.partial(
        logsnr,
        schedule=schedule,
        input_scale=input_scale,
        logsnr_min=logsnr_min,
        logsnr_max=logsnr_max,
    )
    t = jnp.asarray(t, jnp.float32)
    # lambda is elementwise in t, so a JVP with an all-ones tangent is the elementwise derivative.
    _, dlam = jax.jvp(fn, (t,), (jnp.ones_like(t),))
    return -dlam


def alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
    """SPEC 5.1: alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)).

    Args:
      logsnr: float array, any shape.

    Returns:
      (alpha, sigma), each the shape of logsnr.
    """
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


# ------------------------------------------------------------------------------------------------
# Loss weights (SPEC 5.5).
# ------------------------------------------------------------------------------------------------

WEIGHTINGS: dict[str, Callable[[Array], Array]] = {
    "SNR": jnp.exp,
    "SNR_plus1": lambda lam: 1.0 + jnp.exp(lam),
    "SNR_trunc": lambda lam: jnp.maximum(jnp.exp(lam), 1.0),
    "uniform": jnp.ones_like,
}
_SIGMOID_PREFIX = "sigmoid"


@functools.cache
def weighting_fn(weighting: str) -> Callable[[Array], Array]:
    """SPEC 5.5: the bare (not decoupled) weight as a function of lambda.

    `sigmoid_<beta>` (any float beta, e.g. "sigmoid_-4", "sigmoid_2.5"; "sigmoid" means beta = 0)
    gives sigmoid(lambda - beta); the other names are the keys of `WEIGHTINGS`.

    Args:
      weighting: the weighting name.

    Returns:
      A function lambda [...] -> w [...].

    Raises:
      KeyError: unknown name, or a `sigmoid_` suffix that is not a float.
    """
    if not isinstance(weighting, str):
        raise KeyError(f"weighting must be a string, got {weighting!r}.")
    if weighting == _SIGMOID_PREFIX or weighting.startswith(_SIGMOID_PREFIX + "_"):
        suffix = weighting[len(_SIGMOID_PREFIX) + 1 :]
        try:
            bias = 0.0 if weighting == _SIGMOID_PREFIX else float(suffix)
        except ValueError:
            raise KeyError(
                f"Malformed weighting {weighting!r}: expected 'sigmoid' or 'sigmoid_<float bias>' "
                "such as 'sigmoid_-4'."
            ) from None
        if not math.isfinite(bias):
            raise KeyError(f"Malformed weighting {weighting!r}: the sigmoid bias must be finite.")
        return lambda lam: jax.nn.sigmoid(lam - bias)
    try:
        return WEIGHTINGS[weighting]
    except KeyError:
        raise KeyError(
            f"Unknown weighting {weighting!r}; expected 'sigmoid_<bias>' or one of "
            f"{sorted(WEIGHTINGS)}."
        ) from None


@functools.partial(
    jax.jit,
    static_argnames=("weighting", "decoupled")
    + ("schedule", "input_scale", "logsnr_min", "logsnr_max"),
)
def loss_weight(
    t: Array,
    *,
    weighting: str = "sigmoid_-4",
    decoupled: bool = True,
    schedule: str = "cosine",
    input_scale: float = 0.1,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> Array:
    """SPEC 5.5: loss weight w(t), evaluated on the scaled, remapped logSNR.

    Decoupled (default): w(t) = f(lambda(t)) * (-d lambda / dt), which turns the loss into an
    integral over lambda; otherwise w(t) = f(lambda(t)). Default sigmoid(lambda + 4) * (-lambda').

    Args:
      t: float array [B] (any shape) in [0, 1].
      weighting: see `weighting_fn`.
      decoupled: multiply by -d lambda / dt.
      schedule, input_scale, logsnr_min, logsnr_max: see `gamma_pair`.

    Returns:
      w(t), same shape as t, float32.
    """
    fn = weighting_fn(weighting)
    kwargs = {
        "schedule": schedule,
        "input_scale": input_scale,
        "logsnr_min": logsnr_min,
        "logsnr_max": logsnr_max,
    }
    w = fn(logsnr(t, **kwargs))
    if decoupled:
        w = w * neg_dlogsnr_dt(t, **kwargs)
    return w


# ------------------------------------------------------------------------------------------------
# Training-time t samplers (SPEC 5.2).
# ------------------------------------------------------------------------------------------------


def _t_uniform(rng: Array, batch_size: int) -> Array:
    return jax.random.uniform(rng, (batch_size,), jnp.float32)


def _t_uniform_low_d(rng: Array, batch_size: int) -> Array:
    # One t per stratum [n/B, (n+1)/B), strata randomly assigned to batch positions.
    perm_rng, u_rng = jax.random.split(rng)
    strata = jax.random.permutation(perm_rng, batch_size).astype(jnp.float32)
    return (strata + jax.random.uniform(u_rng, (batch_size,), jnp.float32)) / batch_size


def _t_low_discrepancy(rng: Array, batch_size: int) -> Array:
    # VDM-style: one shared offset u, t_j = (j + u) / B, then permuted (the reference's version of
    # this sampler crashes, SPEC B4; this is what it was meant to do).
    u_rng, perm_rng = jax.random.split(rng)
    u = jax.random.uniform(u_rng, (), jnp.float32)
    t = (jnp.arange(batch_size, dtype=jnp.float32) + u) / batch_size
    return jax.random.permutation(perm_rng, t)


T_SAMPLERS: dict[str, Callable[[Array, int], Array]] = {
    "uniform": _t_uniform,
    "uniform_low_d": _t_uniform_low_d,
    "low_discrepancy": _t_low_discrepancy,
}


@functools.partial(jax.jit, static_argnames=("batch_size", "sampler"))
def sample_t(rng: Array, batch_size: int, sampler: str) -> Array:
    """SPEC 5.2: draws training times.

    Args:
      rng: a JAX key.
      batch_size: B (static).
      sampler: "uniform" | "uniform_low_d" | "low_discrepancy".

    Returns:
      t [B] float32 in [0, 1] (1.0 itself can occur through float32 rounding of (B - 1 + u) / B).
    """
    fn = _lookup(T_SAMPLERS, sampler, "t sampler")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return fn(rng, batch_size)


# ------------------------------------------------------------------------------------------------
# Forward process, parameterisations, final activations (SPEC 5.3, 5.4).
# ------------------------------------------------------------------------------------------------


def _per_sample(v: Array, ndim: int) -> Array:
    """[B] -> [B, 1, ..., 1] with `ndim` dims in total, for broadcasting over NHWC."""
    return jnp.reshape(v, v.shape + (1,) * (ndim - v.ndim))


def q_sample(x0: Array, logsnr: Array, eps: Array) -> Array:
    """SPEC 5.3: x_t = alpha(t) x_0 + sigma(t) eps.

    Args:
      x0: clean bits [B, H, W, C].
      logsnr: lambda(t) [B].
      eps: noise [B, H, W, C].

    Returns:
      x_t [B, H, W, C].
    """
    alpha, sigma = alpha_sigma(_per_sample(logsnr, x0.ndim))
    return alpha * x0 + sigma * eps


def _from_x(out, x_t, alpha, sigma):
    return out, (x_t - alpha * out) / sigma


def _from_eps(out, x_t, alpha, sigma):
    return (x_t - sigma * out) / alpha, out


def _from_v(out, x_t, alpha, sigma):
    # v = alpha eps - sigma x  =>  x = alpha x_t - sigma v.
    x_hat = alpha * x_t - sigma * out
    return x_hat, (x_t - alpha * x_hat) / sigma


PREDICTIONS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "x": _from_x,
    "eps": _from_eps,
    "v": _from_v,
}


def predict_x_eps(out: Array, x_t: Array, logsnr: Array, predict: str) -> tuple[Array, Array]:
    """SPEC 5.4: (x_hat, eps_hat) from the network output for the given parameterisation.

    Args:
      out: network output after the final activation [B, H, W, C].
      x_t: network input [B, H, W, C].
      logsnr: lambda(t) [B].
      predict: "x" | "eps" | "v".

    Returns:
      (x_hat, eps_hat), each [B, H, W, C].
    """
    fn = _lookup(PREDICTIONS, predict, "prediction type")
    alpha, sigma = alpha_sigma(_per_sample(logsnr, x_t.ndim))
    return fn(out, x_t, alpha, sigma)


FINAL_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softmax": lambda out: jax.nn.softmax(out, axis=-1),  # over channels (NHWC).
    "none": lambda out: out,
}


def final_activation(out: Array, name: str) -> Array:
    """SPEC 5.4: the activation applied to the head's output.

    Args:
      out: [B, H, W, C].
      name: "tanh" | "sigmoid" | "softmax" (over channels) | "none".

    Returns:
      Activated output, same shape.
    """
    return _lookup(FINAL_ACTIVATIONS, name, "final activation")(out)


def resolve_final_activation(name: str, predict: str) -> str:
    """SPEC 5.4: spells out `tanh_if_x` (tanh for x-prediction, else none); others pass through.

    Args:
      name: "tanh_if_x" or a key of `FINAL_ACTIVATIONS`.
      predict: "x" | "eps" | "v".

    Returns:
      A key of `FINAL_ACTIVATIONS`.
    """
    _lookup(PREDICTIONS, predict, "prediction type")
    if name == "tanh_if_x":
        return "tanh" if predict == "x" else "none"
    _lookup(FINAL_ACTIVATIONS, name, "final activation")
    return name


# ------------------------------------------------------------------------------------------------
# Config.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion settings the pure functions need (hashable, so usable as a jit static arg).

    Attributes mirror `config.diffusion` (SPEC sections 0 and 5): schedule, input_scale,
    logsnr_min, logsnr_max, predict, weighting, decoupled, t_sampler.
    """

    schedule: str = "cosine"
    input_scale: float = 0.1
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    predict: str = "x"
    weighting: str = "sigmoid_-4"
    decoupled: bool = True
    t_sampler: str = "uniform_low_d"

    def __post_init__(self):
        # Fail at construction, not at the first traced step.
        _lookup(SCHEDULES, self.schedule, "schedule")
        _lookup(PREDICTIONS, self.predict, "prediction type")
        _lookup(T_SAMPLERS, self.t_sampler, "t sampler")
        weighting_fn(self.weighting)
        for name in ("input_scale", "logsnr_min", "logsnr_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"DiffusionConfig.{name} must be a float, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.decoupled, bool):
            raise TypeError(f"DiffusionConfig.decoupled must be a bool, got {self.decoupled!r}.")
        _check_schedule_args(self.input_scale, self.logsnr_min, self.logsnr_max)

    @classmethod
    def from_config(cls, config: Any) -> "DiffusionConfig":
        """Picks this class's fields from a `config.diffusion` ConfigDict (extra fields ignored)."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in config]
        if missing:
            raise KeyError(f"config.diffusion lacks the field(s) {missing}.")
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

    @property
    def schedule_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `logsnr`, `gamma_pair` and `neg_dlogsnr_dt`."""
        return {
            "schedule": self.schedule,
            "input_scale": self.input_scale,
            "logsnr_min": self.logsnr_min,
            "logsnr_max": self.logsnr_max,
        }


# ------------------------------------------------------------------------------------------------
# Training loss (SPEC 5.5).
# ------------------------------------------------------------------------------------------------


def _check_shape(name: str, x: Array, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(shape)}.")


def _check_nhwc(name: str, x: Array, channels: int | None = None) -> None:
    if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
        want = f"[B, H, W, {channels}]" if channels is not None else "[B, H, W, C]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}.")


def training_loss(
    denoise_fn: DenoiseFn,
    x0: Array,
    image: Array,
    mask: Array,
    rng: Array,
    cfg: DiffusionConfig,
    *,
    t: Array | None = None,
    eps: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SPEC 5.5: the weighted x-space MSE of one batch.

    MSE_j = sum over masked pixels and all channels of (x_hat - x0)^2 / (N_j + 1e-14) (channels
    summed, not averaged; N_j = number of masked pixels); loss = mean_j w(t_j) MSE_j. The loss is in
    x space for every prediction type. Image dropout for CFG is the caller's job.

    Args:
      denoise_fn: (x_t [B, H, W, C], t [B], image [B, H, W, 3]) -> out [B, H, W, C].
      x0: clean bits [B, H, W, C] float.
      image: conditioning image [B, H, W, 3] (already zeroed where dropped).
      mask: [B, H, W] bool, pixels that count.
      rng: JAX key for t and eps (unused for what is given).
      cfg: the diffusion settings.
      t: optional [B] times overriding the sampler (parity tests).
      eps: optional [B, H, W, C] noise overriding the draw (parity tests).

    Returns:
      (loss scalar, aux) with aux keys `t` [B], `logsnr` [B], `weight` [B], `mse` [B] (unweighted),
      `loss_per_sample` [B] (= weight * mse), `x_t`, `eps`, `x_hat` [B, H, W, C].
    """
    _check_nhwc("x0", x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise TypeError(f"x0 must be float bits [B, H, W, C], got dtype {x0.dtype}.")
    b, h, w, _ = x0.shape
    _check_nhwc("image", image, 3)
    _check_shape("image", image, (b, h, w, 3))
    _check_shape("mask", mask, (b, h, w))
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be bool [B, H, W], got dtype {mask.dtype}.")
    t_rng, eps_rng = jax.random.split(rng)
    if t is None:
        t = sample_t(t_rng, b, cfg.t_sampler)
    _check_shape("t", t, (b,))
    if eps is None:
        eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
    _check_shape("eps", eps, x0.shape)

    t = jnp.asarray(t, jnp.float32)
    lam = logsnr(t, **cfg.schedule_kwargs)
    x_t = q_sample(x0, lam, eps)
    out = denoise_fn(x_t, t, image)
    _check_shape("denoise_fn output", out, x0.shape)
    x_hat, _ = predict_x_eps(out, x_t, lam, cfg.predict)

    m = mask.astype(x0.dtype)
    sq = jnp.sum(jnp.square(x_hat - x0), axis=-1)  # [B, H, W], summed over channels.
    mse = jnp.sum(sq * m, axis=(1, 2)) / (jnp.sum(m, axis=(1, 2)) + 1e-14)
    weight = loss_weight(t, weighting=cfg.weighting, decoupled=cfg.decoupled, **cfg.schedule_kwargs)
    loss_per_sample = weight * mse
    aux = {
        "t": t,
        "logsnr": lam,
        "weight": weight,
        "mse": mse,
        "loss_per_sample": loss_per_sample,
        "x_t": x_t,
        "eps": eps,
        "x_hat": x_hat,
    }
    return jnp.mean(loss_per_sample), aux


# ------------------------------------------------------------------------------------------------
# Sampling steps (SPEC 7.2, 7.3).
# ------------------------------------------------------------------------------------------------

VAR_TYPES = ("large", "small")


@functools.partial(jax.jit, static_argnames=("var_type",))
def ddpm_coefficients(
    logsnr_t: Array, logsnr_s: Array, var_type: str = "large"
) -> tuple[Array, Array, Array]:
    """SPEC 7.2: x_s = c_xt x_t + c_xhat x_hat + std z for one ancestral step t -> s < t.

    With r = exp(lambda_t - lambda_s): c_xt = r alpha_s / alpha_t, c_xhat = (1 - r) alpha_s,
    var = (1 - r) sigma_t^2 ("large") or (1 - r) sigma_s^2 ("small").

    Args:
      logsnr_t, logsnr_s: lambda at the current and the next time, same shape (e.g. [] or [N]).
      var_type: "large" | "small".

    Returns:
      (c_xt, c_xhat, std), each the shape of the inputs.
    """
    if var_type not in VAR_TYPES:
        raise KeyError(f"Unknown var_type {var_type!r}; expected one of {list(VAR_TYPES)}.")
    r = jnp.exp(logsnr_t - logsnr_s)
    one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)  # exact near r = 1 (many steps).
    alpha_s2, sigma_s2 = jax.nn.sigmoid(logsnr_s), jax.nn.sigmoid(-logsnr_s)
    sigma_t2 = jax.nn.sigmoid(-logsnr_t)
    # alpha_s / alpha_t = sqrt((1 + e^-lambda_t) / (1 + e^-lambda_s)), finite for |lambda| <= 80.
    c_xt = r * jnp.sqrt((1.0 + jnp.exp(-logsnr_t)) / (1.0 + jnp.exp(-logsnr_s)))
    c_xhat = one_minus_r * jnp.sqrt(alpha_s2)
    var = one_minus_r * (sigma_t2 if var_type == "large" else sigma_s2)
    return c_xt, c_xhat, jnp.sqrt(var)


def ddpm_step(
    x_t: Array,
    x_hat: Array,
    logsnr_t: Array,
    logsnr_s: Array,
    noise: Array,
    var_type: str = "large",
) -> Array:
    """SPEC 7.2: one ancestral DDPM step (scalar times shared by the batch).

    Args:
      x_t: [B, H, W, C] current sample.
      x_hat: [B, H, W, C] predicted clean bits (after clipping/padding replacement).
      logsnr_t, logsnr_s: scalar lambda at t and s.
      noise: z ~ N(0, I), [B, H, W, C].
      var_type: "large" | "small".

    Returns:
      x_s [B, H, W, C].
    """
    c_xt, c_xhat, std = ddpm_coefficients(logsnr_t, logsnr_s, var_type)
    return c_xt * x_t + c_xhat * x_hat + std * noise


def ddim_step(x_hat: Array, eps_hat: Array, logsnr_s: Array) -> Array:
    """SPEC 7.3: x_s = alpha_s x_hat + sigma_s eps_hat (eps_hat: the guided one, before clipping).

    Args:
      x_hat: [B, H, W, C] predicted clean bits (after clipping/padding replacement).
      eps_hat: [B, H, W, C].
      logsnr_s: scalar lambda at s.

    Returns:
      x_s [B, H, W, C].
    """
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    return alpha_s * x_hat + sigma_s * eps_hat


SAMPLERS = ("ddpm", "ddim")


def _step_table(cfg: DiffusionConfig, num_steps: int, sampler: str, var_type: str) -> dict:
    """Per-execution-step scalars [N]: t, lambda_t, and the update's coefficients.

    The update is written as x <- c_x * x + c_xhat * x_hat + c_eps * eps_hat + std * z for both
    samplers; the last step (s = 0) gets (0, 1, 0, 0), so it returns x_hat exactly and uses no
    noise (SPEC 7.1) while the loop body stays the same for every step.
    """
    i = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.float32)  # loop index i = N-1, ..., 0
    t = (i + 1.0) / num_steps
    s = i / num_steps
    lam_t = logsnr(t, **cfg.schedule_kwargs)
    lam_s = logsnr(s, **cfg.schedule_kwargs)
    zero = jnp.zeros_like(t)
    if sampler == "ddpm":
        c_x, c_xhat, std = ddpm_coefficients(lam_t, lam_s, var_type)
        c_eps = zero
    else:
        c_xhat, c_eps = alpha_sigma(lam_s)
        c_x, std = zero, zero
    last = jnp.arange(num_steps) == num_steps - 1
    return {
        "t": t,
        "logsnr_t": lam_t,
        "c_x": jnp.where(last, 0.0, c_x),
        "c_xhat": jnp.where(last, 1.0, c_xhat),
        "c_eps": jnp.where(last, 0.0, c_eps),
        "std": jnp.where(last, 0.0, std),
    }


def _sample_impl(
    denoise_fn,
    rng,
    image,
    valid,
    noise_init,
    step_noise,
    *,
    cfg,
    num_channels,
    num_steps,
    guidance_weight,
    sampler,
    var_type,
    clip_denoised,
    return_trajectory,
):
    b, h, w, _ = image.shape
    shape = (b, h, w, num_channels)
    init_rng, step_rng = jax.random.split(rng)
    if noise_init is None:
        noise_init = jax.random.normal(init_rng, shape, jnp.float32)
    table = _step_table(cfg, num_steps, sampler, var_type)
    guided = guidance_weight != 0.0
    if guided:
        # The unconditional branch sees exactly the training-time dropped image: all zeros.
        image_in = jnp.concatenate([image, jnp.zeros_like(image)], axis=0)
    else:
        image_in = image
    keep = valid[..., None]

    def body(x, xs):
        k, step = xs
        alpha_t, sigma_t = alpha_sigma(step["logsnr_t"])
        lam_b = jnp.full((b,), step["logsnr_t"])
        if guided:
            x_t2 = jnp.concatenate([x, x], axis=0)
            out = denoise_fn(x_t2, jnp.full((2 * b,), step["t"]), image_in)
            x_hat2, _ = predict_x_eps(out, x_t2, jnp.concatenate([lam_b, lam_b]), cfg.predict)
            x_hat_c, x_hat_u = x_hat2[:b], x_hat2[b:]
            # Guidance on x_hat is the SPEC 7.1 eps-space rule rewritten (x_t, alpha, sigma are
            # shared), and avoids dividing by alpha_t = 4.5e-5 at t = 1 (parity README section 8).
            x_hat = (1.0 + guidance_weight) * x_hat_c - guidance_weight * x_hat_u
        else:
            out = denoise_fn(x, jnp.full((b,), step["t"]), image_in)
            x_hat, _ = predict_x_eps(out, x, lam_b, cfg.predict)
        eps_hat = (x - alpha_t * x_hat) / sigma_t
        if clip_denoised:
            x_hat = jnp.clip(x_hat, -1.0, 1.0)  # eps_hat is NOT recomputed (SPEC 7.1).
        x_hat = jnp.where(keep, x_hat, -1.0)
        x_next = step["c_x"] * x + step["c_xhat"] * x_hat + step["c_eps"] * eps_hat
        if sampler == "ddpm":  # DDIM is deterministic after the initial noise.
            if step_noise is None:
                z = jax.random.normal(jax.random.fold_in(step_rng, k), shape, jnp.float32)
            else:
                z = step_noise[k]
            x_next = x_next + step["std"] * z
        traj = {"x_t": x, "x_hat": x_hat, "eps_hat": eps_hat} if return_trajectory else None
        return x_next, traj

    x_final, traj = jax.lax.scan(body, noise_init, (jnp.arange(num_steps), table))
    if return_trajectory:
        traj["t"] = table["t"]
        return x_final, traj
    return x_final


_SAMPLE_STATIC = (
    "cfg",
    "num_channels",
    "num_steps",
    "guidance_weight",
    "sampler",
    "var_type",
    "clip_denoised",
    "return_trajectory",
)
_sample_jit = jax.jit(_sample_impl, static_argnames=_SAMPLE_STATIC)


def sample(
    denoise_fn: DenoiseFn,
    rng: Array,
    image: Array,
    valid: Array,
    cfg: DiffusionConfig,
    *,
    num_channels: int,
    num_steps: int = 8,
    guidance_weight: float = 1.0,
    sampler: str = "ddpm",
    var_type: str = "large",
    clip_denoised: bool = True,
    noise_init: Array | None = None,
    step_noise: Array | None = None,
    return_trajectory: bool = False,
) -> Array | tuple[Array, dict[str, Array]]:
    """SPEC 7.1-7.3: the guided DDPM/DDIM sampling loop, compiled once per static setting.

    Execution step k = 0..N-1 uses loop index i = N-1-k, t = (i+1)/N, s = i/N. Each step makes ONE
    `denoise_fn` call: on [x; x] with [image; zeros] when guidance_weight != 0 (batch 2B), on x with
    the image alone when it is 0 (batch B). Each branch is converted to x_hat first, then
    x_hat = (1+w) x_hat_c - w x_hat_u and eps_hat = (x_t - alpha_t x_hat) / sigma_t (identical to
    guidance in eps space); x_hat is then clipped to [-1, 1] (optional) and set to -1 outside
    `valid`. DDPM: x <- c_xt x + c_xhat x_hat + std z; DDIM: x <- alpha_s x_hat + sigma_s eps_hat;
    the final step returns x_hat and draws no noise.

    The loop is a `lax.scan` under `jax.jit`. Static: cfg, num_channels, num_steps, guidance_weight,
    sampler, var_type, clip_denoised, return_trajectory. `denoise_fn` is wrapped in a
    `jax.tree_util.Partial`: pass the same callable to reuse the compiled sampler, or pass
    `jax.tree_util.Partial(apply_fn, params)` so that new params do not recompile. Callable inside
    an outer `jax.jit` as well.

    Args:
      denoise_fn: (x_t [b, H, W, C], t [b], image [b, H, W, 3]) -> out [b, H, W, C] after the final
        activation, with b = B or 2B.
      rng: JAX key (initial noise from one half, step noise from `fold_in(other half, k)`).
      image: [B, H, W, 3] conditioning images.
      valid: [B, H, W] bool, the non-padding region.
      cfg: diffusion settings (schedule and `predict` are used).
      num_channels: C of the diffusion tensor.
      num_steps: N >= 1.
      guidance_weight: w (0 = conditional only; -1 = unconditional model).
      sampler: "ddpm" | "ddim".
      var_type: DDPM variance, "large" | "small".
      clip_denoised: clip x_hat to [-1, 1] every step.
      noise_init: optional [B, H, W, C] initial x at t = 1 (parity).
      step_noise: optional [N, B, H, W, C] DDPM z per execution step (parity; the last is unused).
      return_trajectory: also return per-step arrays.

    Returns:
      x_hat [B, H, W, C], the final clipped, padding-replaced prediction; with `return_trajectory`
      a tuple (x_hat, traj) where traj has `x_t`, `x_hat`, `eps_hat` [N, B, H, W, C] (network input,
      x_hat after clipping/padding, guided eps_hat before clipping) and `t` [N].
    """
    if sampler not in SAMPLERS:
        raise KeyError(f"Unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}.")
    if var_type not in VAR_TYPES:
        raise KeyError(f"Unknown var_type {var_type!r}; expected one of {list(VAR_TYPES)}.")
    if not isinstance(cfg, DiffusionConfig):
        raise TypeError(f"cfg must be a DiffusionConfig, got {type(cfg).__name__}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive int, got {num_channels!r}.")
    _check_nhwc("image", image, 3)
    b, h, w, _ = image.shape
    _check_shape("valid", valid, (b, h, w))
    if valid.dtype != jnp.bool_:
        raise TypeError(f"valid must be bool [B, H, W], got dtype {valid.dtype}.")
    shape = (b, h, w, num_channels)
    if noise_init is not None:
        _check_shape("noise_init", noise_init, shape)
    if step_noise is not None:
        _check_shape("step_noise", step_noise, (num_steps,) + shape)
    image, valid = jnp.asarray(image), jnp.asarray(valid)
    noise_init = None if noise_init is None else jnp.asarray(noise_init, jnp.float32)
    step_noise = None if step_noise is None else jnp.asarray(step_noise, jnp.float32)
    if not isinstance(denoise_fn, jax.tree_util.Partial):
        denoise_fn = jax.tree_util.Partial(denoise_fn)
    # Inside the caller's jit/export, trace the loop in place: a nested jit would gain nothing and
    # would keep every traced closure alive in its cache. (Under an active trace even the
    # jnp.asarray above returns a Tracer, so this detects any enclosing transformation.)
    tracing = any(isinstance(a, jax.core.Tracer) for a in (rng, image, valid, noise_init))
    return (_sample_impl if tracing else _sample_jit)(
        denoise_fn,
        rng,
        image,
        valid,
        noise_init,
        step_noise,
        cfg=cfg,
        num_channels=num_channels,
        num_steps=num_steps,
        guidance_weight=float(guidance_weight),
        sampler=sampler,
        var_type=var_type,
        clip_denoised=bool(clip_denoised),
        return_trajectory=bool(return_trajectory),
    )
