"""Experiment configs (ml_collections). Run from the repo root: `--config=configs/base.py`."""
