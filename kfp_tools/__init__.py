"""Helpers around the Kubeflow Pipelines v1 API that the TFX CLI does not cover.

``python -m kfp_tools.schedule`` manages the recurring (scheduled) retraining run.
"""
