"""Moved to :mod:`semalign.common.channels` (``link`` and ``rayleigh``); kept only while
callers move (``RayleighChannel`` is :class:`~semalign.common.channels.BlockFadingLink`)."""

from semalign.common.channels import BlockFadingLink as RayleighChannel
from semalign.common.channels import block_channel, complex_noise, noise_variance, rayleigh_matrix

__all__ = ["RayleighChannel", "block_channel", "complex_noise", "noise_variance", "rayleigh_matrix"]
