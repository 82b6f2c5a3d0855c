"""semalign: federated latent-space alignment for multi-user semantic communications."""

__version__ = "0.1.0"
