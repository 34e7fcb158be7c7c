"""Module files for TFX components (one folder each) and the facts they share."""
