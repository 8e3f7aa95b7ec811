"""Reference PyTorch U-Net state dict -> our params (parity README 2.1-2.3).

This file owns the weight converter. Our module tree mirrors the reference's, so a PyTorch key maps
to a params path by rule, not by a per-key table:

  input_blocks.9.1.qkv.weight  ->  params["input_blocks"][9][1]["qkv"]["kernel"]

dots separate path entries, integers are list positions, the leaf `weight` is `kernel` (Conv2d,
Conv1d, Linear) or `scale` (GroupNorm), `bias` stays `bias`. Layouts change by `LAYOUTS`, chosen by
the (PyTorch ndim, Flax ndim) pair of each tensor. Every key must be consumed and every parameter
filled; anything else raises with the key and both shapes.

  params = convert("run/ckpt.pt", config.model)        # or a .npz, or a {key: array} dict
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitseg_jax.models import unet


def _conv2d(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO; both are cross-correlations, no flip


def _conv1d_k1(w: np.ndarray) -> np.ndarray:
    return w[:, :, 0].T  # [O, I, 1] -> Dense [I, O]


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T  # [out, in] -> [in, out]


def _same(w: np.ndarray) -> np.ndarray:
    return w


# (PyTorch ndim, Flax ndim) -> (description, PyTorch -> Flax array, Flax shape -> PyTorch shape).
LAYOUTS: dict[tuple[int, int], tuple[str, Callable, Callable]] = {
    (4, 4): ("Conv2d [O,I,kh,kw] -> [kh,kw,I,O]", _conv2d, lambda s: (s[3], s[2], s[0], s[1])),
    (3, 2): ("Conv1d k=1 [O,I,1] -> Dense [I,O]", _conv1d_k1, lambda s: (s[1], s[0], 1)),
    (2, 2): ("Linear [out,in] -> Dense [in,out]", _linear, lambda s: (s[1], s[0])),
    (1, 1): ("bias / GroupNorm [C]", _same, lambda s: tuple(s)),
}

# The reference's Conv1d k=1 projections (README 2.1); every other 2-D Flax kernel is a Linear.
_CONV1D_NAMES = ("qkv", "proj_out")


def _torch_table(model_config: Any) -> dict[str, tuple[tuple, tuple[int, ...], tuple[int, int]]]:
    """PyTorch key -> (our params path, PyTorch shape, LAYOUTS key), in our tree order."""
    abstract = unet.abstract_params(model_config)
    table = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        path = tuple(k.key for k in path)
        *parents, name = path
        key = ".".join(map(str, parents)) + (".bias" if name == "bias" else ".weight")
        torch_ndim = 3 if leaf.ndim == 2 and parents[-1] in _CONV1D_NAMES else leaf.ndim
        layout = (torch_ndim, leaf.ndim)
        table[key] = (path, LAYOUTS[layout][2](leaf.shape), layout)
    return table


def torch_key_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
    """The PyTorch state-dict keys and shapes of the reference model for `model_config`.

    Computed from our abstract params (no allocation); for the default config this equals
    `unet_default_keys.json` (530 keys). Useful to check a checkpoint before converting.
    """
    return {key: shape for key, (_, shape, _) in _torch_table(model_config).items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; `.float()` widens fp16 checkpoints
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads `{PyTorch key: array}` from a `.npz` or a `.pt` / `.pth` file.

    A `.npz` that holds a `param_keys` entry (the parity fixtures) contributes only those keys;
    otherwise every entry is a parameter. `.pt` / `.pth` need PyTorch (imported here only) and must
    hold a plain state dict (`torch.save(model.state_dict(), path)`).

    Raises:
      ImportError: a .pt / .pth file without PyTorch installed.
      ValueError: an unknown suffix, or a .pt file that is not a state dict.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = [str(k) for k in z["param_keys"]] if "param_keys" in z.files else z.files
            return {k: z[k] for k in keys}
    if suffix in (".pt", ".pth"):
        try:
            import torch  # lazy: only this path needs it
        except ImportError as e:
            raise ImportError(
                f"Reading {path} needs PyTorch (pip install 'bitseg-jax[torch]'), or save the "
                "state dict as .npz: np.savez(out, **{k: v.numpy() for k, v in sd.items()})."
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping) or not all(hasattr(v, "detach") for v in obj.values()):
            what = f"a dict with keys {list(obj)[:5]}" if isinstance(obj, Mapping) else type(obj)
            raise ValueError(
                f"{path} does not hold a plain state dict (key -> tensor) but {what}; save "
                "`model.state_dict()` of the reference UNetModel."
            )
        return {k: _to_numpy(v) for k, v in obj.items()}
    raise ValueError(f"{path}: expected a .npz, .pt or .pth file, got suffix {suffix!r}.")


def convert(state_dict: Mapping[str, Any] | str | os.PathLike, model_config: Any) -> dict:
    """Converts the reference U-Net's weights to our params tree.

    Args:
      state_dict: `{PyTorch key: array or tensor}` (parity README 2.1 names), or a path to a
        `.npz` / `.pt` / `.pth` file (see `load_state_dict`).
      model_config: the `config.model` ConfigDict (or `UNetConfig`) the weights belong to.

    Returns:
      Nested dict of float32 arrays, the structure `init_unet(model_config, rng)` returns.

    Raises:
      ValueError: unknown keys, missing keys or shape mismatches, all listed with the PyTorch key,
        the given shape and the expected shape.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_state_dict(state_dict)
    table = _torch_table(model_config)
    flat, errors = {}, []
    for key, value in state_dict.items():
        value = _to_numpy(value)
        if key not in table:
            errors.append(f"unexpected key {key!r} with shape {value.shape}")
            continue
        path, shape, layout = table[key]
        if value.shape != shape:
            errors.append(f"shape mismatch for {key!r}: got {value.shape}, expected {shape}")
            continue
        flat[path] = jnp.asarray(LAYOUTS[layout][1](value), dtype=jnp.float32)
    errors += [
        f"missing key {key!r} with shape {shape}"
        for key, (_, shape, _) in table.items()
        if key not in state_dict
    ]
    if errors:
        raise ValueError(
            f"convert: the state dict does not fit the model ({len(errors)} problems):\n  "
            + "\n  ".join(errors)
        )
    params: dict = {}
    for path, array in flat.items():
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = array
    return params
