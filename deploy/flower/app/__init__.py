"""The semalign Flower App: :mod:`.serverapp` (invitations out, final reports back) and
:mod:`.clientapp` (a user's side of the protocol over gRPC). This folder is also the App that
``flwr run`` submits; its pyproject.toml names these components and ships only itself and
README.md in the FAB (the code comes from the installed package)."""
