"""Every config file and variant loads; every sweep entry applies to its base config."""

import importlib
import pkgutil

import ml_collections
import pytest

import configs.sweeps
from configs import base

CONFIG_MODULES = ("base", "quickstart", "bsds_cpu")
SWEEPS = sorted(m.name for m in pkgutil.iter_modules(configs.sweeps.__path__))


def load(spec: str) -> ml_collections.ConfigDict:
    """'configs/base.py:tiny' -> the ConfigDict, as `--config=` would load it."""
    path, _, arg = spec.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_config_file_loads_locked_and_documented(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert "python -m bitseg_jax.main" in module.__doc__  # the command is documented
    with pytest.raises(AttributeError):
        config.optim.lrr = 1.0  # locked: typos fail loudly
    # Same groups and keys as the base config: variants only change values.
    assert set(config.to_dict()) == set(base.get_config().to_dict())


@pytest.mark.parametrize("variant", base.VARIANTS)
def test_base_variants(variant):
    config = base.get_config(variant)
    assert config.model.image_size > 0


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'tinyy'.*tiny"):
        base.get_config("tinyy")


def test_small_variant_parameter_count():
    models = pytest.importorskip("bitseg_jax.models")
    from bitseg_jax import train_state

    params = models.abstract_params(base.get_config("small").model)
    assert train_state.num_params(params) == 7_274_374


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    assert leaf in node, f"sweep key {key!r} does not exist in the config"
    node[leaf] = value  # locked config: type mismatches raise here


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_entries_apply(sweep):
    module = importlib.import_module(f"configs.sweeps.{sweep}")
    entries = module.get_sweep()
    assert entries and all(isinstance(e, dict) and e for e in entries)
    assert len({tuple(sorted(e.items())) for e in entries}) == len(entries)  # no duplicates
    base_spec = getattr(module, "BASE_CONFIG", "configs/base.py")
    for entry in entries:
        config = load(base_spec)
        for key, value in entry.items():
            _set(config, key, value)
        # The settings are ones the code accepts.
        if config.model.encoding == "analog_bits" and config.diffusion.predict != "x":
            assert config.model.final_activation != "tanh", entry


def test_sweeps_cover_spec_section_10():
    sizes = {
        name: len(importlib.import_module(f"configs.sweeps.{name}").get_sweep()) for name in SWEEPS
    }
    assert sizes["lap"] == 4
    assert sizes["pred_weighting"] == 12
    assert sizes["pred"] == 3
    assert sizes["sigmoid_bias"] == 5
    assert sizes["size"] == 5
    assert sizes["onehot_pred"] == 3 and sizes["onehot_act"] == 2 and sizes["onehot_size"] == 3
    assert sizes["unigs_pred"] == 3
    assert sizes["encodings"] == 6
    entries = importlib.import_module("configs.sweeps.input_scale").get_sweep()
    assert {1.0, 0.1} <= {e["diffusion.input_scale"] for e in entries}
    assert {e["data.lap_mode"] for e in entries} == {"none"}


def test_diffusion_settings_of_every_sweep_are_valid():
    diffusion = pytest.importorskip("bitseg_jax.diffusion")
    for sweep in SWEEPS:
        module = importlib.import_module(f"configs.sweeps.{sweep}")
        for entry in module.get_sweep():
            config = load(getattr(module, "BASE_CONFIG", "configs/base.py"))
            for key, value in entry.items():
                _set(config, key, value)
            diffusion.DiffusionConfig.from_config(config.diffusion)  # raises on bad names
