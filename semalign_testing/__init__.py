"""Test hosts for tests and benchmarks, outside the wheel: :mod:`.testbed` (network namespaces
joined through a bridge) and :mod:`.link_emulator` (delay and rate where the kernel has no
netem). Importable from the repository root (pytest's ``pythonpath``)."""
