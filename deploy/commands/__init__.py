"""The networked commands' entry points, one module per command: ``semalign run``,
``ap``, ``user``, ``certs``, ``token``, ``health``, and ``python -m`` :mod:`.prepare` (the
compose file's ``encode`` service)."""
