"""What runs the networked system on this host: :mod:`.ap_side` (the AP's serve path that
``run`` and ``ap`` share), :mod:`.launcher` (process supervision) and :mod:`.display` (the
live progress)."""
