"""The Flower ServerApp of the deployment: invitations out, final reports back.

Flower supervises the user processes (one SuperNode per user) and carries two messages per user
per run: an invitation (the AP's alignment service address and the per-session token) and, when
the user's ClientApp has finished every session over its gRPC stream, that user's final report.
The protocol itself never goes through Flower (DESIGN.md, "Transport").

Run config (deploy/flwr_app/pyproject.toml has the defaults; ``semalign ap``/``semalign run``
override them when they start the run):

* ``service-address``: host:port of the alignment service as the users reach it;
* ``token``: the per-session token; ``tls``: whether the service uses TLS;
* ``users``: how many SuperNodes to wait for; ``node-wait-s``: for how long;
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

app = ServerApp()


def invitation_content(address: str, token: str, tls: bool) -> RecordDict:
    return RecordDict(
        {"invitation": ConfigRecord({"address": address, "token": token, "tls": bool(tls)})}
    )


def _write(path: str, payload: dict) -> None:
    """The status file, replaced atomically (the AP process reads it while we write)."""
    if path:
        from semalign.common.io import write_json

        write_json(path, payload)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    users = int(cfg["users"])
    wait = float(cfg["node-wait-s"])
    report_file = str(cfg.get("report-file", ""))
    start = time.monotonic()
    node_ids: list[int] = []
    while time.monotonic() - start < wait:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= users:
            break
        time.sleep(0.2)
    status = {"nodes": len(node_ids), "expected": users, "reports": {}, "errors": []}
    if len(node_ids) < users:
        status["errors"].append(f"only {len(node_ids)} of {users} SuperNodes after {wait:g} s")
    log.info("inviting %d SuperNodes to %s", len(node_ids), cfg["service-address"])
    content = invitation_content(str(cfg["service-address"]), str(cfg["token"]), bool(cfg["tls"]))
    messages = [
        Message(content, dst_node_id=node_id, message_type=INVITATION, group_id="invitation")
        for node_id in node_ids
    ]
    # Our own pull loop (send_and_receive sleeps 3 s between pulls): each report is written as
    # soon as it arrives, so the AP learns at once of a user whose ClientApp failed.
    pending = set(grid.push_messages(messages))
    status["invited_s"] = time.monotonic() - start
    _write(report_file, status)
    deadline = time.monotonic() + float(cfg["session-timeout-s"])
    while pending and time.monotonic() < deadline:
        replies = list(grid.pull_messages(pending))
        for reply in replies:
            pending.discard(reply.metadata.reply_to_message_id)
            _record(status, reply)
        if replies:
            _write(report_file, status)
        time.sleep(0.5)
    status["done"] = not pending
    status["seconds"] = time.monotonic() - start
    _write(report_file, status)


def _record(status: dict, reply: Message) -> None:
    node = reply.metadata.src_node_id
    if reply.has_error():
        status["errors"].append(f"node {node}: {reply.error.reason}")
        return
    record = reply.content["report"]
    status["reports"][str(record["user-id"])] = {"node_id": node, **json.loads(str(record["json"]))}
