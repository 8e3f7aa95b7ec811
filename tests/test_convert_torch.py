"""Tests of bitseg_jax/convert_torch.py on the tiny config (no fixtures needed).

The PyTorch-layout state dicts here are written by the test itself from the layouts in parity
README 2.3; the real reference weights are covered by tests/test_parity.py.
"""

import sys
import types

import jax
import numpy as np
import pytest

from bitseg_jax import convert_torch
from bitseg_jax.models import abstract_params
from configs import base


def _tiny():
    return base.get_config("tiny").model


def _params_and_state_dict(model_config):
    """Random params in our layout and the same weights in PyTorch layout and naming."""
    abstract = abstract_params(model_config)
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    noise = np.asarray(jax.random.normal(jax.random.key(0), (sum(x.size for _, x in flat),)))
    params, state_dict, offset = {}, {}, 0
    for path, leaf in flat:
        keys = [k.key for k in path]
        value = noise[offset : offset + leaf.size].reshape(leaf.shape).astype(np.float32)
        offset += leaf.size
        node = params
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        module, name = keys[-2], keys[-1]
        if name == "kernel" and value.ndim == 4:  # Conv2d: HWIO -> OIHW
            torch_value = value.transpose(3, 2, 0, 1)
        elif name == "kernel" and module in ("qkv", "proj_out"):  # Conv1d k=1: [I,O] -> [O,I,1]
            torch_value = value.T[:, :, None]
        elif name == "kernel":  # Linear: [in, out] -> [out, in]
            torch_value = value.T
        else:  # bias, GroupNorm scale
            torch_value = value
        torch_name = "bias" if name == "bias" else "weight"
        state_dict[".".join(map(str, keys[:-1] + [torch_name]))] = torch_value
    return params, state_dict


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_reference_names_and_shapes_for_tiny():
    shapes = convert_torch.torch_key_shapes(_tiny())  # 8 channels, mult (1, 2), attention both
    assert shapes["time_embed.0.weight"] == (32, 8)
    assert shapes["input_blocks.0.0.weight"] == (8, 9, 3, 3)
    assert shapes["input_blocks.1.0.in_layers.0.weight"] == (8,)  # GroupNorm scale
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (8, 32)
    assert shapes["input_blocks.1.1.qkv.weight"] == (24, 8, 1)
    assert shapes["input_blocks.1.1.proj_out.weight"] == (8, 8, 1)
    assert shapes["input_blocks.2.0.op.weight"] == (8, 8, 3, 3)
    assert shapes["input_blocks.3.0.skip_connection.weight"] == (16, 8, 1, 1)
    assert "input_blocks.1.0.skip_connection.weight" not in shapes  # 8 -> 8: identity
    assert shapes["middle_block.1.norm.bias"] == (16,)
    assert shapes["output_blocks.1.2.conv.weight"] == (16, 16, 3, 3)  # Upsample after Attn
    assert shapes["output_blocks.2.0.in_layers.2.weight"] == (8, 24, 3, 3)  # [h, skip] concat
    assert shapes["out.1.weight"] == (8,) and shapes["out.3.weight"] == (6, 8, 3, 3)


def test_convert_round_trip():
    params, state_dict = _params_and_state_dict(_tiny())
    assert set(state_dict) == set(convert_torch.torch_key_shapes(_tiny()))
    converted = convert_torch.convert(state_dict, _tiny())
    _assert_same_tree(converted, params)
    assert {x.dtype for x in jax.tree.leaves(converted)} == {np.dtype(np.float32)}


def test_convert_reports_every_problem():
    _, state_dict = _params_and_state_dict(_tiny())
    state_dict["input_blocks.9.0.op.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    del state_dict["middle_block.1.qkv.bias"]
    state_dict["out.3.weight"] = state_dict["out.3.weight"].transpose(1, 0, 2, 3)
    with pytest.raises(ValueError, match="3 problems") as info:
        convert_torch.convert(state_dict, _tiny())
    message = str(info.value)
    assert "unexpected key 'input_blocks.9.0.op.weight' with shape (8, 8, 3, 3)" in message
    assert "missing key 'middle_block.1.qkv.bias' with shape (48,)" in message
    assert "'out.3.weight': got (8, 6, 3, 3), expected (6, 8, 3, 3)" in message


def test_convert_rejects_weights_of_another_config():
    _, state_dict = _params_and_state_dict(_tiny())
    other = _tiny()
    other.unlock()
    other.num_bits = 4  # 4 bits: 7 input / 4 output channels
    with pytest.raises(ValueError, match="input_blocks.0.0.weight': got"):
        convert_torch.convert(state_dict, other)


def test_convert_from_npz(tmp_path):
    params, state_dict = _params_and_state_dict(_tiny())
    path = tmp_path / "weights.npz"
    np.savez(path, **state_dict)
    _assert_same_tree(convert_torch.convert(path, _tiny()), params)
    # A fixture-style file: extra arrays, the parameters listed under `param_keys`.
    path = tmp_path / "fixture.npz"
    np.savez(path, **state_dict, x_t=np.zeros(3), param_keys=np.array(list(state_dict)))
    _assert_same_tree(convert_torch.convert(str(path), _tiny()), params)
    np.savez(path, **state_dict, x_t=np.zeros(3))
    with pytest.raises(ValueError, match="unexpected key 'x_t'"):
        convert_torch.convert(path, _tiny())


class _FakeTensor:
    """What the converter uses of a torch.Tensor."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def cpu(self):
        return self

    def float(self):
        return _FakeTensor(self.value.astype(np.float32))

    def numpy(self):
        return self.value


def test_convert_from_pt_with_torch(tmp_path, monkeypatch):
    params, state_dict = _params_and_state_dict(_tiny())
    half = {k: _FakeTensor(v.astype(np.float16)) for k, v in state_dict.items()}
    fake = types.ModuleType("torch")
    fake.load = lambda path, map_location, weights_only: half
    monkeypatch.setitem(sys.modules, "torch", fake)
    converted = convert_torch.convert(tmp_path / "ckpt.pt", _tiny())
    for x, y in zip(jax.tree.leaves(converted), jax.tree.leaves(params)):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y.astype(np.float16).astype(np.float32))

    fake.load = lambda path, map_location, weights_only: {"model": half, "step": 3}
    with pytest.raises(ValueError, match="not hold a plain state dict"):
        convert_torch.convert(tmp_path / "ckpt.pth", _tiny())


def test_pt_without_torch_and_unknown_suffix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert_torch.convert(tmp_path / "ckpt.pt", _tiny())
    with pytest.raises(ValueError, match="suffix '.safetensors'"):
        convert_torch.load_state_dict(tmp_path / "ckpt.safetensors")
