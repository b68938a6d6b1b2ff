"""Sparse autoencoders: architectures (sae.models), training (sae.train), evaluation (sae.evaluate), SAELens-format io (sae.io)."""
