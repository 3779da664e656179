"""Classifier experiments, one file each (`get_config(variant)`; see base.py for the variants)."""
