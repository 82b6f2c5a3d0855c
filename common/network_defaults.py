"""The networked system's defaults, written once: ports, listen addresses and timeouts.

Everything that starts or joins a networked run reads its defaults here: the command line of
``semalign run``, ``ap``, ``user`` and ``health`` (:mod:`semalign.deploy.cli`), the AP's serve
path and gRPC service (:mod:`semalign.deploy.serving.ap_side`, :mod:`semalign.server.service`),
the Flower ClientApp's fallbacks (:mod:`semalign.deploy.flower.app.clientapp`). The files that
cannot import Python (docker-compose.yml, deploy/Dockerfile, the Flower App's pyproject.toml,
the docs' examples) repeat the ports as literals; ``tests/test_compose.py`` checks that they
equal these.

Times are in seconds. A library function's own default (``WaitPolicy``: no reply timeout, no
rejoin grace; :func:`semalign.client.stream.run_user`) is the neutral value of a building
block, not a deployment default, and stays where it is.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- ports
#: The AP's gRPC alignment service (``semalign ap --listen``; users dial it with ``--ap``).
SERVICE_PORT = 50051
#: The AP's plaintext health listener in docker-compose.yml (``semalign ap --health-listen``,
#: off unless given; meant for loopback: a container's healthcheck).
HEALTH_PORT = 50052
#: The Flower SuperLink's Fleet API (``semalign ap --flower --superlink-listen``).
SUPERLINK_PORT = 9092
#: A user's SuperNode's local runtime API (``semalign user --runtime-port``).
SUPERNODE_RUNTIME_PORT = 9094

# ---------------------------------------------------------------------------- addresses
#: ``semalign ap --listen``: every interface.
AP_LISTEN = f"0.0.0.0:{SERVICE_PORT}"
#: ``semalign ap --superlink-listen``: every interface (only the Fleet API answers others).
SUPERLINK_LISTEN = f"0.0.0.0:{SUPERLINK_PORT}"
#: ``semalign run --listen`` (and a ``ServeSettings`` without one): loopback, any free port.
LOCAL_LISTEN = "127.0.0.1:0"

# ---------------------------------------------------------------------------- timeouts (s)
#: How long the AP waits for its users to join a session (``--join-timeout``).
JOIN_TIMEOUT = 600.0
#: How long the AP waits for a user's reply before dropping it (``--reply-timeout``).
REPLY_TIMEOUT = 60.0
#: How long an authenticated stream has to send its first message, the handshake
#: (``--first-message-timeout``; also the gRPC service's own default).
FIRST_MESSAGE_TIMEOUT = 30.0
#: How long a user keeps trying to reach the AP (``semalign user --connect-timeout``).
CONNECT_TIMEOUT = 60.0
#: How long a user whose stream broke may take to come back (AP), and keeps trying (user):
#: ``--rejoin-grace`` on both sides.
REJOIN_GRACE = 60.0
#: How long ``semalign health`` waits for the AP's answer (``--timeout``).
HEALTH_CHECK_TIMEOUT = 5.0

# ---------------------------------------------------------------------------- limits
#: Open streams one peer address may hold on the AP (``--max-streams-per-address``; users
#: behind one NAT share an address).
MAX_STREAMS_PER_ADDRESS = 8
