"""The training loop: `train_and_evaluate(config, workdir)` (SPEC section 9).

Read top to bottom: setup, state, restore, data, steps, loop. One `jax.jit` train step does the
whole of SPEC 9.1 (image dropout, label encoding, diffusion loss, gradients, clipping, AdamW,
EMA) on a batch sharded over the "data" mesh axis; jit inserts the gradient all-reduce.

Determinism and resuming: the step's randomness is `fold_in(rng, state.step)` and the data
iterator is started at the restored step, so a run that is killed at any step and resumed ends
with exactly the parameters of an uninterrupted run.

Intervals (SPEC 9.3) are checked after the step with that number (steps count from 1): logging
every `log_every_steps`, validation loss every `vali_loss_every_steps`, sampling evaluation every
`eval_every_steps` (+ the "best" checkpoint), regular checkpoints every `ckpt_every_steps`, and
all of them at the last step.
"""

import contextlib
import functools
import signal
import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from bitseg_jax import (
    checkpointing,
    diffusion,
    encoding,
    evaluation,
    input_pipeline,
    models,
    sharding,
    train_state,
)

# Keys of a train batch that go to the device (eval batches carry more).
BATCH_KEYS = ("image", "label", "valid")


# --------------------------------------------------------------------------------------------
# The step functions (pure; jitted in train_and_evaluate).
# --------------------------------------------------------------------------------------------


def _loss(params, batch, rng, config, dcfg):
    """SPEC 9.1 steps 2-5: CFG image dropout, encoding, the diffusion loss. Returns (loss, aux)."""
    k_image, k_loss, k_dropout = jax.random.split(rng, 3)
    image, labels = batch["image"], batch["label"]
    # SPEC 5.6: per sample, keep the image with probability p_image, else an all-zero image.
    keep = jax.random.bernoulli(k_image, config.diffusion.p_image, (image.shape[0],))
    image = jnp.where(keep[:, None, None, None], image, 0.0)
    m = config.model
    x0 = encoding.encode(labels, encoding=m.encoding, num_bits=m.num_bits, rgb_offset=m.rgb_offset)
    mask = labels != -1  # SPEC 5.5 "ignore_padded" mask (all True unless data.mask_padding).

    def denoise_fn(x_t, t, img):
        return models.apply_unet(
            m, params, x_t, t, img, deterministic=m.dropout == 0.0, rng=k_dropout
        )

    return diffusion.training_loss(denoise_fn, x0, image, mask, k_loss, dcfg)


def train_step(state, batch, rng, *, config, dcfg, tx, lr_fn):
    """One SPEC 9.1 update. Returns (new_state, metrics) with scalar metrics.

    Args:
      state: `TrainState` (donated by the jitted caller).
      batch: dict with image [B,S,S,3] f32, label [B,S,S] i32, valid [B,S,S] bool (global).
      rng: the run's training key; this step uses `fold_in(rng, state.step)`.
      config, dcfg, tx, lr_fn: the config, `DiffusionConfig`, optimizer and LR schedule.
    """
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    (loss, _), grads = grad_fn(state.params, batch, step_rng, config, dcfg)
    grad_norm = train_state.global_norm(grads)  # the norm SPEC 9.1 step 6 clips
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(jnp.add, state.params, updates)
    ema = train_state.ema_update(state.ema_params, params, config.optim.ema_rate)
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
    )
    # The reference logs the fraction of gradient entries with |g| > the clip value (SPEC 9.3).
    leaves = jax.tree.leaves(grads)
    n_large = sum(jnp.sum(jnp.abs(g) > config.optim.grad_clip) for g in leaves)
    metrics = {
        "train/loss": loss,
        "train/grad_norm": grad_norm,
        "train/lr": lr_fn(state.step + 1),  # SPEC 9.2: the first update is step 1.
        "train/param_norm": train_state.global_norm(params),
        "train/frac_grads_above_clip": n_large / sum(g.size for g in leaves),
    }
    return new_state, metrics


def vali_loss_step(params, batch, rng, *, config, dcfg):
    """SPEC 9.3: the training loss on a validation batch (dropout active, no gradients).

    Padded rows of the eval iterator (`_mask` False) get an all-False pixel mask, so their
    per-sample MSE is 0; the batch mean is rescaled to the mean over the real rows.
    """
    real = batch["_mask"]
    labels = jnp.where(real[:, None, None], batch["label"], -1)
    loss, _ = _loss(params, {"image": batch["image"], "label": labels}, rng, config, dcfg)
    return loss * real.shape[0] / jnp.maximum(jnp.sum(real), 1)


class StepFunctions(NamedTuple):
    """The jitted functions of one (model/diffusion/optim config, mesh) and the state layout."""

    init: Callable  # rng -> TrainState, created directly in its (replicated) sharding
    train: Callable  # (state, batch, rng) -> (state, metrics); donates the state
    vali_loss: Callable  # (params, batch, rng) -> scalar
    abstract_state: train_state.TrainState  # ShapeDtypeStructs carrying the shardings


def _step_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The part of the config that the jitted functions depend on (their cache key)."""
    return ml_collections.FrozenConfigDict(
        {k: config[k] for k in ("total_steps", "model", "diffusion", "optim")}
    )


@functools.lru_cache(maxsize=4)
def step_functions(step_config: ml_collections.FrozenConfigDict, mesh) -> StepFunctions:
    """Builds (once per config and mesh) the jitted init, train step and validation loss.

    Cached so that several `train_and_evaluate` calls in one process (a resumed run, tests,
    notebooks) trace and compile once. Params, EMA and optimizer state are replicated, metrics
    too; the batch comes in sharded over "data" and jit inserts the gradient all-reduce.
    """
    repl = sharding.replicated(mesh)
    init_fn = functools.partial(train_state.create_train_state, step_config)
    # Shapes first (nothing is allocated); the same tree with shardings is the restore target.
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    state_sh = jax.tree.map(lambda _: repl, abstract)
    abstract = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh
    )
    dcfg = diffusion.DiffusionConfig.from_config(step_config.diffusion)
    step = functools.partial(
        train_step,
        config=step_config,
        dcfg=dcfg,
        tx=train_state.create_optimizer(step_config),
        lr_fn=train_state.learning_rate_schedule(step_config.optim, step_config.total_steps),
    )
    return StepFunctions(
        # out_shardings: the state is created in place, no full copy lands on device 0 first.
        init=jax.jit(init_fn, out_shardings=state_sh),
        train=jax.jit(step, donate_argnums=0, out_shardings=(state_sh, repl)),
        vali_loss=jax.jit(
            functools.partial(vali_loss_step, config=step_config, dcfg=dcfg), out_shardings=repl
        ),
        abstract_state=abstract,
    )


# --------------------------------------------------------------------------------------------
# Small helpers of the loop.
# --------------------------------------------------------------------------------------------


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
    """Config -> {"optim.lr": 1e-4, ...} with scalars only (TensorBoard hparams)."""
    out = {}

    def visit(prefix, node):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                visit(key + ".", v)
            else:
                out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    visit("", config.to_dict())
    return out


def _check_finite(step: int, metrics: dict, workdir) -> None:
    """Stops the run, without saving, on a non-finite loss, gradient or parameter norm."""
    for key in ("train/loss", "train/grad_norm", "train/param_norm"):
        value = float(metrics[key])
        if not np.isfinite(value):
            raise FloatingPointError(
                f"Non-finite {key} = {value} at step {step}: stopping without saving. The last "
                f"checkpoint in {workdir} (if any) predates the problem; lower optim.lr, check "
                "optim.grad_clip, or look for bad inputs before resuming."
            )


def _load_init_params(init_from: str, abstract_params, replicated):
    """`config.init_from`: an exported weights .npz, or another run's workdir (latest params)."""
    if init_from.endswith(".npz"):
        params = checkpointing.load_npz_params(init_from, abstract_params)
    else:
        params, step = checkpointing.restore_params(init_from, sharding=replicated)
        params = checkpointing.params_like(params, abstract_params, f"init_from={init_from}")
        logging.info("init_from: params of step %d of %s", step, init_from)
    return jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), replicated)


class _Preemption:
    """SIGTERM -> save and stop at the next step boundary (the handler only sets a flag)."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())

    def reached(self, step: int, ckpt: checkpointing.Checkpointer) -> bool:
        if jax.process_count() > 1:
            # All processes must agree to save together: jax.distributed's preemption sync.
            return ckpt.reached_preemption(step)
        return self.event.is_set()

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _evaluate(evaluators, params, step, writer, ckpt, config, best):
    """Runs the periodic sampling evaluations; saves "best" when the first one improves."""
    for i, (prefix, evaluator) in enumerate(evaluators):
        results = evaluator.run(params)
        writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in results.items()})
        if getattr(evaluator, "images", None) is not None:
            writer.write_images(step, {f"{prefix}/samples": np.asarray(evaluator.images)[None]})
        if i == 0:
            name = config.eval.best_metric
            if name not in results:
                raise KeyError(
                    f"config.eval.best_metric={name!r} is not an evaluation result; "
                    f"available: {sorted(results)}."
                )
            value = float(results[name])
            if best is None or value > best:
                logging.info("New best %s = %.4f at step %d (was %s).", name, value, step, best)
                ckpt.save_best(step, params, name, value)
                best = value
    return best


# --------------------------------------------------------------------------------------------
# train_and_evaluate
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
    """Trains (resuming if `workdir` holds a checkpoint), evaluates and checkpoints.

    Args:
      config: the full config (configs/base.py).
      workdir: output folder (local or gs://): config.json, checkpoints/, best/, event files.

    Returns:
      The final `TrainState` (replicated global arrays).

    Raises:
      FloatingPointError: a non-finite loss/gradient/parameter norm (nothing is saved).
    """
    # ---------------------------------- setup ----------------------------------------------
    workdir = epath.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        checkpointing.save_config(config, workdir)
    mesh = sharding.create_mesh()
    sharding.global_batch_size_ok(config.batch_size, mesh)
    repl = sharding.replicated(mesh)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=not is_main, asynchronous=True
    )
    rng = jax.random.key(config.seed)
    init_rng, train_rng, vali_rng = jax.random.split(rng, 3)

    # ---------------------------------- state ----------------------------------------------
    fns = step_functions(_step_config(config), mesh)
    abstract = fns.abstract_state
    parameter_overview.log_parameter_overview(abstract.params, include_stats=False)
    logging.info("Model parameters: %d", train_state.num_params(abstract.params))

    # ---------------------------------- restore --------------------------------------------
    # big_vision's order: this workdir's checkpoint, then config.init_from, then scratch.
    ckpt = checkpointing.Checkpointer(workdir, config, max_to_keep=config.max_ckpts_to_keep)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(abstract)
        logging.info("Resumed from the checkpoint of step %d in %s.", int(state.step), workdir)
    else:
        state = fns.init(init_rng)
        if config.init_from:
            params = _load_init_params(config.init_from, abstract.params, repl)
            state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
    start_step = int(state.step)
    best = ckpt.best_value()
    if is_main and start_step == 0:
        writer.write_hparams(_flat_hparams(config))

    # ---------------------------------- data -----------------------------------------------
    # Started at the restored step: the same batches an uninterrupted run sees from here on.
    train_iter = input_pipeline.create_train_iterator(config, start_step=start_step)

    # ---------------------------------- steps ----------------------------------------------
    # The train step is fns.train (above); here the validation loss and the evaluators.
    evaluators = None  # built at the first evaluation (they compile their own sampler)

    def run_vali(step: int) -> float:
        batches = input_pipeline.create_eval_iterator(
            config,
            config.data.eval_split,
            num_images=config.num_vali_batches * config.batch_size,
            seed=step,  # a fresh draw of validation images each time, like the reference
            batch_size=config.batch_size,
        )
        losses = []
        for i, b in enumerate(batches):
            b = sharding.to_global({k: b[k] for k in (*BATCH_KEYS, "_mask")}, mesh)
            losses.append(
                fns.vali_loss(state.params, b, jax.random.fold_in(vali_rng, step * 1000 + i))
            )
        return float(np.mean(jax.device_get(losses)))

    # ---------------------------------- loop -----------------------------------------------
    hooks = []
    report = None
    if is_main:
        report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)
        hooks = [report, periodic_actions.Profile(logdir=workdir, num_profile_steps=5)]
    preemption = _Preemption()
    history: list[dict] = []  # host copies of the per-step metrics since the last log
    pending = None  # (step, device metrics) of the previous step, checked one step late
    logging.info("Training steps %d..%d.", start_step + 1, config.total_steps)
    try:
        # set_mesh: the evaluators (and any sharding annotation) use the same mesh.
        with jax.set_mesh(mesh), metric_writers.ensure_flushes(writer):
            for step in range(start_step + 1, config.total_steps + 1):
                is_last = step == config.total_steps
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = next(train_iter)
                    batch = sharding.to_global({k: batch[k] for k in BATCH_KEYS}, mesh)
                    state, metrics = fns.train(state, batch, train_rng)
                # Fetch the previous step's metrics while this one runs (keeps the device busy).
                if pending is not None:
                    history.append(jax.device_get(pending[1]))
                    _check_finite(pending[0], history[-1], workdir)
                pending = (step, metrics)
                for hook in hooks:
                    hook(step)

                preempted = preemption.reached(step, ckpt)
                do_log = step % config.log_every_steps == 0 or is_last or preempted
                do_vali = step % config.vali_loss_every_steps == 0 or is_last
                do_eval = step % config.eval_every_steps == 0 or is_last
                do_ckpt = step % config.ckpt_every_steps == 0 or is_last or preempted
                if do_log or do_vali or do_eval or do_ckpt:
                    # Nothing is logged, evaluated or saved before this step is known finite.
                    history.append(jax.device_get(metrics))
                    _check_finite(step, history[-1], workdir)
                    pending = None
                if do_log:
                    scalars = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
                    writer.write_scalars(step, scalars)
                    history = []
                if do_vali and config.num_vali_batches > 0:
                    with report.timed("vali") if report else contextlib.nullcontext():
                        writer.write_scalars(step, {"vali/loss": run_vali(step)})
                if do_ckpt:
                    with report.timed("checkpoint") if report else contextlib.nullcontext():
                        ckpt.save(step, state)
                if preempted:
                    logging.warning("Preemption at step %d: checkpoint saved, stopping.", step)
                    break
                if do_eval and config.eval.num_images > 0:
                    with report.timed("eval") if report else contextlib.nullcontext():
                        ckpt.wait_until_finished()  # never evaluate a state still being written
                        if evaluators is None:
                            evaluators = _create_evaluators(config)
                        params = state.ema_params if config.eval.use_ema else state.params
                        best = _evaluate(evaluators, params, step, writer, ckpt, config, best)
    finally:
        preemption.restore()
        ckpt.close()  # waits for pending writes; a failed run keeps its last good checkpoint
        writer.flush()
    return state


def _create_evaluators(config):
    """SPEC 9.3: `64x3[vali]` then `64x3[train]` (the first one picks the best checkpoint)."""
    return [
        (
            prefix,
            evaluation.Evaluator(
                config,
                split=split,
                num_images=config.eval.num_images,
                num_samples=config.eval.num_samples,
            ),
        )
        for prefix, split in (
            ("eval", config.data.eval_split),
            ("eval_train", config.data.train_split),
        )
    ]
