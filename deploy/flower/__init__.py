"""Flower in the deployment: :mod:`.launch` (SuperLink, SuperNodes and the run that invites
them), :mod:`.superlink` and :mod:`.supernode` (Flower's own processes, patched), :mod:`.app`
(the Flower App: ServerApp and ClientApp)."""
