"""The Flower ServerApp of the deployment: identities in, invitations out, final reports back.

Flower supervises the user processes (one SuperNode per user) and carries three messages per
user per run: an identity query (which user id does this SuperNode run?), an invitation (the
AP's alignment service address and that user's own token) and, when the user's ClientApp has
finished every session over its gRPC stream, that user's final report. The protocol itself
never goes through Flower (DESIGN.md, "Transport").

Tokens: the ServerApp reads the AP's secret from ``secret-file`` (on the AP's host; the secret
is never in the run config) and gives each SuperNode only ``user_token(secret, user_id)`` of
the user id it claims, bound to that node: an id claimed by an earlier node, an id that is not
invited, or more ids than ``users`` are refused (``status["refused"]``, no invitation).

Run config (deploy/flwr_app/pyproject.toml has the defaults; ``semalign ap``/``semalign run``
override them when they start the run):

* ``service-address``: host:port of the alignment service as the users reach it;
* ``secret-file``: the AP's secret; ``user-ids``: comma-separated invited ids (empty: any);
  ``tls``: whether the service uses TLS;
* ``users``: how many SuperNodes to wait for; ``node-wait-s``: for how long (also how long a
  SuperNode has to say who it is);
* ``session-timeout-s``: how long to wait for the reports;
* ``report-file``: where to write the status and reports (JSON, rewritten as replies arrive),
  read by the AP process.
"""

from __future__ import annotations

import json
import logging
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger(__name__)

INVITATION = "query.invitation"
IDENTIFY = "query.identify"

app = ServerApp()


def invitation_content(address: str, user_id: str, token: str, tls: bool) -> RecordDict:
    return RecordDict(
        {
            "invitation": ConfigRecord(
                {"address": address, "user-id": user_id, "token": token, "tls": bool(tls)}
            )
        }
    )


def _write(path: str, payload: dict) -> None:
    """The status file, replaced atomically (the AP process reads it while we write)."""
    if path:
        from semalign.common.io import write_json

        write_json(path, payload)


class Binding:
    """Which SuperNode runs which user id: the first node to claim an invited id gets it."""

    def __init__(self, invited: list[str], users: int) -> None:
        self.invited = invited
        self.users = users
        self.nodes: dict[str, int] = {}  # user id -> node id

    def claim(self, node: int, user_id: str) -> str | None:
        """Bind ``user_id`` to ``node``; the reason if refused."""
        from semalign.common.credentials import check_user_id

        try:
            check_user_id(user_id)
        except ValueError as exc:
            return str(exc)
        if self.invited and user_id not in self.invited:
            return f"user id {user_id!r} is not invited"
        if user_id in self.nodes:
            return f"user id {user_id!r} is already run by node {self.nodes[user_id]}"
        if len(self.nodes) >= self.users:
            return f"already {self.users} users"
        self.nodes[user_id] = node
        return None


@app.main()
def main(grid: Grid, context: Context) -> None:
    from semalign.common.credentials import read_secret_file, user_token

    cfg = context.run_config
    users = int(cfg["users"])
    wait = float(cfg["node-wait-s"])
    report_file = str(cfg.get("report-file", ""))
    secret = read_secret_file(str(cfg["secret-file"]))
    invited = [u for u in str(cfg.get("user-ids", "")).split(",") if u]
    start = time.monotonic()
    node_ids: list[int] = []
    while time.monotonic() - start < wait:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= users:
            break
        time.sleep(0.2)
    status = {"nodes": len(node_ids), "expected": users, "reports": {}, "errors": []}
    status["refused"] = {}
    if len(node_ids) < users:
        status["errors"].append(f"only {len(node_ids)} of {users} SuperNodes after {wait:g} s")
    log.info("asking %d SuperNodes who they are", len(node_ids))
    queries = [
        Message(RecordDict(), dst_node_id=node_id, message_type=IDENTIFY, group_id="identify")
        for node_id in node_ids
    ]
    identify = {mid: node for mid, node in zip(grid.push_messages(queries), node_ids, strict=True)}
    binding = Binding(invited, users)
    address, tls = str(cfg["service-address"]), bool(cfg["tls"])

    def invite(node: int, reply: Message) -> str | None:
        """The invitation's message id for ``node`` (its own token), or None if refused."""
        if reply.has_error():
            reason = f"no identity: {reply.error.reason}"
        else:
            user_id = str(reply.content["identity"]["user-id"])
            reason = binding.claim(node, user_id)
        if reason is not None:
            status["refused"][str(node)] = reason
            log.warning("SuperNode %d refused: %s", node, reason)
            return None
        content = invitation_content(address, user_id, user_token(secret, user_id), tls)
        message = Message(content, dst_node_id=node, message_type=INVITATION, group_id="invitation")
        return next(iter(grid.push_messages([message])))

    # Our own pull loop (send_and_receive sleeps 3 s between pulls): each SuperNode is invited
    # as soon as it has said who it is, and each report is written as soon as it arrives, so
    # the AP learns at once of a user whose ClientApp failed.
    pending: set[str] = set()
    identify_deadline = time.monotonic() + wait
    deadline = time.monotonic() + float(cfg["session-timeout-s"])
    _write(report_file, status)
    while (identify or pending) and time.monotonic() < deadline:
        replies = list(grid.pull_messages(set(identify) | pending))
        for reply in replies:
            mid = reply.metadata.reply_to_message_id
            if mid in identify:
                invitation = invite(identify.pop(mid), reply)
                if invitation is not None:
                    pending.add(invitation)
                if not identify:
                    status["invited_s"] = time.monotonic() - start
            elif mid in pending:
                pending.discard(mid)
                _record(status, reply)
        if identify and time.monotonic() > identify_deadline:
            for node in identify.values():
                status["refused"][str(node)] = f"did not say who it is within {wait:g} s"
            identify.clear()
        if replies:
            _write(report_file, status)
        time.sleep(0.2)
    status["done"] = not (identify or pending)
    status["seconds"] = time.monotonic() - start
    _write(report_file, status)


def _record(status: dict, reply: Message) -> None:
    node = reply.metadata.src_node_id
    if reply.has_error():
        status["errors"].append(f"node {node}: {reply.error.reason}")
        return
    record = reply.content["report"]
    status["reports"][str(record["user-id"])] = {"node_id": node, **json.loads(str(record["json"]))}
