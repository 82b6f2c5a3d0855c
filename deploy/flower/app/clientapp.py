"""The Flower ClientApp of the deployment: a user's process for the whole run.

The SuperNode's node config says who this user is (``semalign user`` writes it):

* ``user-id`` (e.g. "user3"), ``ordinal`` (0-based; with the seed it seeds the emulated channel),
  ``encoder`` (timm name);
* ``latents``: a latent cache directory, or empty: then the user encodes ``dataset`` with its
  own encoder into ``cache-dir`` on first use (``semalign.encoders.ensure_latents``);
* optional ``antennas-rx``/``snr-db`` overrides, ``tls-ca``/``tls-cert``/``tls-key`` paths,
  ``connect-timeout-s``.

The ServerApp first asks who this SuperNode is (``identify``: the node config's ``user-id``),
then invites it with that user's own token. When the invitation arrives, the ClientApp loads
this user's private latents, joins the AP's alignment service over one gRPC stream per session
(:func:`run_user`) and, once the AP has run its last session, answers the invitation with its
final report. Latents never leave.
"""

from __future__ import annotations

import json
import logging
import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from semalign.common.failpoints import failpoint

log = logging.getLogger(__name__)

app = ClientApp()


def _opt(node: dict, key: str, cast):
    value = node.get(key, "")
    return None if value in ("", None) else cast(value)


def load_user_data(node: dict):
    """This user's private data from the node config (encoding its own latents if needed)."""
    from semalign.client.user import user_data_from_cache

    encoder = str(node["encoder"])
    latents = str(node.get("latents", "") or "")
    if not latents:
        from semalign.encoders import default_cache_dir, ensure_latents

        cache = str(node.get("cache-dir", "") or "") or default_cache_dir()
        latents = str(ensure_latents(str(node.get("dataset", "digits")), [encoder], cache))

    def load(pilot_fraction: float, config=None):
        if config is not None:  # research options (semalign.client.task)
            from semalign.client.task import task_user_data

            return task_user_data(latents, encoder, config)
        return user_data_from_cache(latents, encoder, pilot_fraction)

    return load


def run_invitation(node: dict, address: str, token: str, tls: bool) -> list[dict]:
    """Join the AP's sessions as the user described by ``node``; the session reports."""
    from semalign.client.stream import run_user, user_factory
    from semalign.common.contract import TlsFiles
    from semalign.common.network_defaults import CONNECT_TIMEOUT, REJOIN_GRACE

    user_id = str(node["user-id"])
    factory = user_factory(
        user_id,
        str(node["encoder"]),
        int(node["ordinal"]),
        load_user_data(node),
        antennas_rx=_opt(node, "antennas-rx", int),
        snr_db=_opt(node, "snr-db", float),
    )
    files = TlsFiles(
        cert=_opt(node, "tls-cert", str),
        key=_opt(node, "tls-key", str),
        ca=_opt(node, "tls-ca", str),
    )
    reports = run_user(
        address,
        token,
        factory,
        # the user's own CA pins the AP: it never falls back to plaintext on the invitation's word
        tls=files if (tls or files.enabled) else None,
        connect_timeout=float(node.get("connect-timeout-s", CONNECT_TIMEOUT)),
        rejoin_grace=float(node.get("rejoin-grace-s", REJOIN_GRACE)),
        user_id=user_id,
    )
    return [r.as_dict() for r in reports]


@app.query("identify")
def identify(message: Message, context: Context) -> Message:
    """Which user id this SuperNode runs (the ServerApp then sends that user's token only)."""
    user_id = str(dict(context.node_config).get("user-id", ""))
    return Message(RecordDict({"identity": ConfigRecord({"user-id": user_id})}), reply_to=message)


@app.query("invitation")
def invitation(message: Message, context: Context) -> Message:
    node = dict(context.node_config)
    inv = message.content["invitation"]
    logging.basicConfig(level=os.environ.get("SEMALIGN_LOG", "WARNING"))
    user_id = str(node.get("user-id", "?"))
    payload: dict = {"encoder": str(node.get("encoder", "")), "pid": os.getpid()}
    try:
        if str(inv["user-id"]) != user_id:
            raise ValueError(f"invited as {inv['user-id']!r}, this node runs {user_id!r}")
        failpoint("user.invited", int(node.get("ordinal", 0)))  # chaos tests only
        payload["sessions"] = run_invitation(
            node, str(inv["address"]), str(inv["token"]), bool(inv["tls"])
        )
        payload["status"] = "ok"
    except Exception as exc:  # reported to the AP in the final report, one line
        log.error("%s: %s", user_id, exc)
        payload["status"] = "error"
        payload["error"] = f"{type(exc).__name__}: {exc}"
    report = ConfigRecord({"user-id": user_id, "json": json.dumps(payload)})
    return Message(RecordDict({"report": report}), reply_to=message)
