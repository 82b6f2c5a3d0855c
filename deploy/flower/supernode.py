"""A user's Flower SuperNode, with time for its ClientApps to start on a busy host.

Flower 1.41's SuperNode launches one ClientApp process per message and gives it 30 s
(``HEARTBEAT_DEFAULT_INTERVAL``) from the task's claim to its first call; a ClientApp that is
later loses its task ("Runtime task-token authentication failed") and the SuperNode launches
another for the same message. On a loaded host (eleven containers starting on two shared
cores) the imports of a ClientApp take longer than that, every retry adds load, and the
invitations never arrive: measured here, users joined after minutes or not at all.

``python -m semalign.deploy.flower.supernode [flower-supernode options]`` runs the unchanged
``flower-supernode`` with that window set to :data:`CLIENTAPP_START_S` in this process only
(it also sets how long a running task's heartbeat stays valid: twice the window).
"""

from __future__ import annotations

import sys

#: Seconds a launched ClientApp has to claim its task (Flower's default: 30).
CLIENTAPP_START_S = 300


def main(argv: list[str] | None = None) -> None:
    """``flower-supernode ARGV`` with the longer ClientApp start window."""
    from flwr.supercore.corestate import in_memory_corestate
    from flwr.supernode.cli import flower_supernode

    in_memory_corestate.HEARTBEAT_DEFAULT_INTERVAL = CLIENTAPP_START_S
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


if __name__ == "__main__":
    main()
