"""Grad-CAM heatmaps for a fixed audit set: where in the tile the model sees malignancy.

``cam`` holds the math, ``audit_set`` the deterministic image choice, ``render`` the PNGs
and HTML gallery, ``component`` the TFX component that ties them to a trained model.
"""
