"""Helpers that several custom components share: the classifier as the Trainer exported it
(model_io) and a fixed, stratified set of images to show and compare (audit_set)."""
