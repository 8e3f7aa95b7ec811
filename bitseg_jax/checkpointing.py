"""Checkpoints: a thin wrapper around orbax `CheckpointManager` (SPEC 9.3).

Layout of a workdir:

  <workdir>/config.json            the run's config (written by train.py at start)
  <workdir>/checkpoints/<step>/    regular checkpoints: state (StandardSave) + config (JsonSave);
                                   the newest `max_ckpts_to_keep` are kept, the last step always
  <workdir>/best/<step>/           one "best" checkpoint: raw params only (SPEC 9.3, bug B5) +
                                   meta (JsonSave: metric name and value, used on resume)

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact. Saves are asynchronous: the arrays are copied to
host before `save` returns (so the next, donating train step may run), and written in a
background thread; `wait_until_finished` blocks until they are on disk.

All migration to newer orbax APIs should stay inside this file.
"""

import json
import pathlib
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE_DIR = "checkpoints"
BEST_DIR = "best"
CONFIG_FILE = "config.json"
WHICH = ("latest", "best")


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def flatten_params(params: Mapping) -> dict[str, object]:
    """Nested param dict -> {"a/b/kernel": leaf}, the "/"-joined path naming used everywhere."""
    return {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def check_params_match(expected: Mapping, found_shapes: Mapping[str, tuple], source: str) -> None:
    """Raises ValueError naming the first parameter whose path or shape differs.

    Args:
      expected: nested params (arrays or ShapeDtypeStructs) of the current model config.
      found_shapes: {"/"-joined path: shape} of the stored params.
      source: what was read (a checkpoint folder or .npz file), for the message.
    """
    want = {k: tuple(v.shape) for k, v in flatten_params(expected).items()}
    for key, shape in want.items():
        if key not in found_shapes:
            raise ValueError(
                f"Parameter {key!r} of the current model config (shape {shape}) is missing "
                f"from {source}; was it written with a different config.model?"
            )
        if tuple(found_shapes[key]) != shape:
            raise ValueError(
                f"Parameter {key!r} has shape {tuple(found_shapes[key])} in {source} but "
                f"{shape} in the current model config; check config.model (it must match "
                "the run that wrote the checkpoint)."
            )
    extra = sorted(set(found_shapes) - set(want))
    if extra:
        raise ValueError(
            f"{source} holds parameter {extra[0]!r} (shape {tuple(found_shapes[extra[0]])}) "
            "that the current model config does not have; check config.model."
        )


def _config_to_json(config: ml_collections.ConfigDict) -> dict:
    # to_json_best_effort resolves FieldReferences and turns tuples into lists.
    return json.loads(config.to_json_best_effort())


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(data: Mapping) -> ml_collections.ConfigDict:
    """JSON dict (config.json or a checkpoint's config item) -> locked ConfigDict.

    JSON has no tuples, so lists come back as tuples (every sequence field of our configs is one).
    """
    config = ml_collections.ConfigDict(_tuples(dict(data)))
    config.lock()
    return config


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a training run saved in `workdir/config.json`.

    Raises:
      FileNotFoundError: when `workdir` holds no config.json (not a training workdir).
    """
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in workdir {workdir!s}: is it the workdir of a training run "
            "(python -m bitseg_jax.main --mode=train --workdir=...)?"
        )
    return config_from_json(json.loads(path.read_text()))


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
    """Writes `workdir/config.json` (call on process 0 only)."""
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


# Item name -> handler; given up front so that a fresh manager can read metadata and restore.
_STATE_ITEMS = {"state": ocp.StandardCheckpointHandler, "config": ocp.JsonCheckpointHandler}
_BEST_ITEMS = {"params": ocp.StandardCheckpointHandler, "meta": ocp.JsonCheckpointHandler}


def _manager(directory: epath.Path, items: dict, max_to_keep: int | None, *, read_only=False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=not read_only,
        create=not read_only,
        read_only=read_only,
    )
    handlers = {name: handler() for name, handler in items.items()}
    # Orbax's array writer wants an absolute path: a relative workdir (`--workdir=runs/x`) would
    # pass every check here and fail inside the first async save.
    return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=handlers)


class Checkpointer:
    """Regular and "best" checkpoints of one workdir (SPEC 9.3).

    Usage (train.py): `latest_step()` -> `restore(abstract_state)` -> `save(step, state)` on
    `ckpt_every_steps`, the last step and preemption -> `save_best(...)` after evaluations ->
    `close()` (which waits for pending writes).
    """

    def __init__(
        self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict, max_to_keep: int = 1
    ):
        root = epath.Path(workdir)
        self._config_json = _config_to_json(config)
        self._state = _manager(root / STATE_DIR, _STATE_ITEMS, max_to_keep)
        self._best = _manager(root / BEST_DIR, _BEST_ITEMS, 1)

    def latest_step(self) -> int | None:
        """Step of the newest regular checkpoint, or None."""
        return self._state.latest_step()

    def save(self, step: int, state) -> None:
        """Starts an async save of the full state (+ config) at `step` (all processes call it).

        A step that is already saved (e.g. the final step of a resumed, finished run) is skipped.
        """
        if step in self._state.all_steps():
            return
        self._state.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(self._config_json),
            ),
            force=True,
        )

    def restore(self, abstract_state, step: int | None = None):
        """Restores the regular checkpoint at `step` (default: latest) into `abstract_state`.

        Args:
          abstract_state: `TrainState` of `jax.ShapeDtypeStruct`s carrying the target shardings.
          step: checkpoint step; None = latest.

        Raises:
          FileNotFoundError: no checkpoint.
          ValueError: the checkpoint's params do not match the current model config (the
            message names the first mismatched parameter and both shapes).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self._state.directory}.")
        stored = self._state.item_metadata(step)["state"].tree
        check_params_match(
            abstract_state.params,
            {k: v.shape for k, v in flatten_params(stored["params"]).items()},
            f"checkpoint {self._state.directory / str(step)}",
        )
        restored = self._state.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def best_value(self) -> float | None:
        """The metric value of the stored best checkpoint (to carry over on resume), or None."""
        step = self._best.latest_step()
        if step is None:
            return None
        meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return float(meta["meta"]["value"])

    def save_best(self, step: int, params, metric: str, value: float) -> None:
        """Replaces the best checkpoint with the raw `params` of `step` (SPEC 9.3)."""
        self._best.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                meta=ocp.args.JsonSave({"metric": metric, "value": float(value), "step": step}),
            ),
            force=True,
        )

    def reached_preemption(self, step: int) -> bool:
        """Multi-process preemption sync point (jax.distributed's preemption notice)."""
        return self._state.reached_preemption(step)

    def wait_until_finished(self) -> None:
        """Blocks until every pending async save is on disk."""
        self._state.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self.wait_until_finished()
        self._state.close()
        self._best.close()


def _abstract_from_metadata(tree, sharding: jax.sharding.Sharding):
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        tree,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
    )


def restore_params(
    workdir: str | pathlib.Path,
    *,
    which: str = "latest",
    step: int | None = None,
    use_ema: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[dict, int]:
    """Loads model params from a training workdir (for evaluation, segment, export, init_from).

    Args:
      workdir: the training run's workdir.
      which: "latest" (regular checkpoints, raw or EMA params) or "best" (raw params only).
      step: a specific checkpoint step; None = the newest of `which`.
      use_ema: return the EMA params instead of the raw ones ("latest" only).
      sharding: where to place the arrays; default: replicated over all devices.

    Returns:
      (params, step): nested dict of float32 arrays, and the checkpoint's step.

    Raises:
      KeyError: unknown `which`. ValueError: `use_ema` with "best".
      FileNotFoundError: no such checkpoint.
    """
    if which not in WHICH:
        raise KeyError(f"Unknown checkpoint kind which={which!r}; expected one of {WHICH}.")
    if use_ema and which == "best":
        raise ValueError("The best checkpoint holds raw params only (SPEC 9.3); use_ema=False.")
    if sharding is None:
        from bitseg_jax import sharding as sharding_lib  # local: avoid an import cycle

        sharding = sharding_lib.replicated(sharding_lib.create_mesh())
    root = epath.Path(workdir)
    sub, item = (STATE_DIR, "state") if which == "latest" else (BEST_DIR, "params")
    if not (root / sub).exists():
        raise FileNotFoundError(f"No {which} checkpoint in {root}: {root / sub} does not exist.")
    items = _STATE_ITEMS if which == "latest" else _BEST_ITEMS
    mgr = _manager(root / sub, items, None, read_only=True)
    try:
        step = mgr.latest_step() if step is None else step
        if step is None or step not in mgr.all_steps():
            raise FileNotFoundError(
                f"No {which} checkpoint{'' if step is None else f' at step {step}'} in "
                f"{root / sub} (available: {list(mgr.all_steps())})."
            )
        tree = mgr.item_metadata(step)[item].tree
        abstract = _abstract_from_metadata(tree, sharding)
        restored = mgr.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)})
        )[item]
    finally:
        mgr.close()
    if which == "best":
        return restored, step
    return restored["ema_params" if use_ema else "params"], step


def load_npz_params(path: str | pathlib.Path, like: Mapping) -> dict:
    """Reads an exported weights file (flat .npz keyed by "/"-joined param paths) as params.

    Args:
      path: the .npz written by `export.export`.
      like: params (or their ShapeDtypeStructs) of the current model: gives the tree structure.

    Returns:
      Nested params with the structure of `like`, as NumPy float32 arrays.

    Raises:
      ValueError: naming the first missing, extra or differently shaped parameter.
    """
    with epath.Path(path).open("rb") as f:
        data = {k: np.asarray(v, np.float32) for k, v in np.load(f).items()}
    return params_like(data, like, f"weights file {path}")


def params_like(params: Mapping, like: Mapping, source: str) -> dict:
    """Re-nests `params` (nested, or flat by "/"-joined path) in the exact tree of `like`.

    Checkpoints and .npz files turn the U-Net's int keys (list positions) into strings; matching
    leaves by path (never by position: '10' sorts before '2') restores the model's own tree, so
    jit sees the same structure as for freshly initialised params.

    Raises:
      ValueError: naming the first missing, extra or differently shaped parameter of `source`.
    """
    flat = params if all(not isinstance(v, Mapping) for v in params.values()) else None
    flat = flat if flat is not None else flatten_params(params)
    check_params_match(like, {k: np.shape(v) for k, v in flat.items()}, source)
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[_path_str(p)] for p, _ in paths])
