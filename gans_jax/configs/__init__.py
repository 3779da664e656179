"""Experiment configs: one file per experiment, `get_config(variant)` with a `smoke` variant."""
