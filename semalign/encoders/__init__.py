"""Datasets, timm encoders and the latent cache (issue 3)."""
