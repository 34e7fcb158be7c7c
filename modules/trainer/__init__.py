"""Trainer module file and its helpers: data, backbones, weights, model, export."""
