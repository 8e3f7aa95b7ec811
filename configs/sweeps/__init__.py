"""Sweeps (SPEC section 10): `get_sweep() -> list[dict]` of dotted config overrides per module.

`launch/sweep.sh` turns each entry into `--config.<key>=<value>` flags and a workdir suffix; a
module's `BASE_CONFIG` names the config the entries apply to (default configs/base.py).
"""
