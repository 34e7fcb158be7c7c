"""Grad-CAM heatmaps for a fixed audit set: where in the tile the model sees malignancy.

The math lives in ``modules/trainer/grad_cam.py`` (the exported model serves it too);
the deterministic image choice is ``components/shared/audit_set.py`` (TFLiteExport uses it
too); ``render`` draws the PNGs and HTML gallery,
``component`` the TFX component that ties them to a trained model.
"""
