"""The checks and option groups of the networked commands: :mod:`.checks` (addresses, files,
TLS, secrets; the one ``ServeSettings`` builder), :mod:`.reliability` (checkpoint, resume,
rejoin, stragglers, exit codes), :mod:`.observability` (metrics and health listeners)."""
