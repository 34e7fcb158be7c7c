"""Clients of the pushed model: ``python -m serving.predict`` against a SavedModel directory
or a TF Serving REST endpoint. ``images`` validates files, ``rest`` speaks TF Serving's
REST API and checks requests against the exported signature."""
