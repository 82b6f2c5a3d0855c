"""The Flower ServerApp of the deployment: identities in, invitations out, final reports back.

Flower supervises the user processes (one SuperNode per user) and carries three messages per
user per run: an identity query (which user id does this SuperNode run?), an invitation (the
AP's alignment service address and that user's own token) and, when the user's ClientApp has
finished every session over its gRPC stream, that user's final report. The protocol itself
never goes through Flower (docs/architecture.md, "One protocol, three transports").

Tokens: the ServerApp reads the AP's secret from ``secret-file`` (on the AP's host; the secret
is never in the run config) and gives each SuperNode only ``user_token(secret, user_id)`` of
the user id it claims, bound to that node: an id claimed by an earlier node, an id that is not
invited, or more ids than ``users`` are refused (``status["refused"]``, no invitation).

Run config (deploy/flower/app/pyproject.toml has the defaults; ``semalign ap``/``semalign run``
override them when they start the run):

* ``service-address``: host:port of the alignment service as the users reach it;
* ``secret-file``: the AP's secret; ``user-ids``: comma-separated invited ids (empty: any);
  ``tls``: whether the service uses TLS;
* ``users``: how many SuperNodes to invite; ``node-wait-s``: for how long to look for them
  (each is asked who it is and invited as soon as it connects; also how long a SuperNode has
  to say who it is);
* ``session-timeout-s``: how long to wait for the reports;
* ``report-file``: where to write the status and reports (JSON, rewritten as replies arrive),
  read by the AP process: ``reports`` per user, ``lost`` (user id -> why: its SuperNode was
  lost after it was invited, or no SuperNode ran it), ``refused`` nodes, ``errors``.
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


class Invitations:
    """The run's bookkeeping: which SuperNodes were asked who they are, which were invited
    (as which user), and the status file the AP reads."""

    def __init__(self, grid: Grid, cfg, secret: str, invited: list[str], users: int) -> None:
        self.grid, self.secret = grid, secret
        self.address, self.tls = str(cfg["service-address"]), bool(cfg["tls"])
        self.binding = Binding(invited, users)
        self.asked: set[int] = set()  # nodes asked who they are
        self.identify: dict[str, int] = {}  # identify message id -> node
        self.pending: dict[str, str] = {}  # invitation message id -> user id
        self.status: dict = {"nodes": 0, "expected": users, "reports": {}, "errors": []}
        self.status.update(refused={}, lost={})

    def ask_new_nodes(self) -> None:
        """Ask every SuperNode not asked yet who it is (each as soon as it is connected)."""
        nodes = sorted(set(self.grid.get_node_ids()) - self.asked)
        if not nodes:
            return
        self.asked.update(nodes)
        self.status["nodes"] = len(self.asked)
        log.info("asking %d SuperNodes who they are", len(nodes))
        queries = [
            Message(RecordDict(), dst_node_id=node, message_type=IDENTIFY, group_id="identify")
            for node in nodes
        ]
        self.identify.update(zip(self.grid.push_messages(queries), nodes, strict=True))

    def invite(self, node: int, reply: Message) -> None:
        """Invite ``node`` with its own token, or record why it is refused."""
        from semalign.common.credentials import user_token

        if reply.has_error():
            reason = f"no identity: {reply.error.reason}"
        else:
            user_id = str(reply.content["identity"]["user-id"])
            reason = self.binding.claim(node, user_id)
        if reason is not None:
            self.status["refused"][str(node)] = reason
            log.warning("SuperNode %d refused: %s", node, reason)
            return
        content = invitation_content(
            self.address, user_id, user_token(self.secret, user_id), self.tls
        )
        message = Message(content, dst_node_id=node, message_type=INVITATION, group_id="invitation")
        self.pending[next(iter(self.grid.push_messages([message])))] = user_id

    def receive(self, reply: Message) -> None:
        mid = reply.metadata.reply_to_message_id
        if mid in self.identify:
            self.invite(self.identify.pop(mid), reply)
        elif mid in self.pending:
            user_id = self.pending.pop(mid)
            if reply.has_error():  # e.g. "Node Unavailable": Flower lost that SuperNode
                reason = f"its SuperNode was lost: {reply.error.reason}"
                self.status["lost"][user_id] = reason
                log.warning("%s: %s", user_id, reason)
            else:
                _record(self.status, reply)

    def looking(self) -> bool:
        """Whether more SuperNodes may still come: fewer claimed than expected, and not every
        invited user has finished already."""
        claimed = len(self.binding.nodes)
        finished = claimed > 0 and not self.pending and not self.identify
        return claimed < self.binding.users and not finished


@app.main()
def main(grid: Grid, context: Context) -> None:
    from semalign.common.credentials import read_secret_file

    cfg = context.run_config
    wait = float(cfg["node-wait-s"])
    report_file = str(cfg.get("report-file", ""))
    invited = [u for u in str(cfg.get("user-ids", "")).split(",") if u]
    run = Invitations(
        grid, cfg, read_secret_file(str(cfg["secret-file"])), invited, int(cfg["users"])
    )
    status = run.status
    # Our own pull loop (send_and_receive sleeps 3 s between pulls): each SuperNode is asked
    # who it is as soon as it connects and invited as soon as it has answered, and each report
    # is written as soon as it arrives, so the AP learns at once of a user it should not wait
    # for (a SuperNode lost, a ClientApp that failed) while the others join.
    start = time.monotonic()
    identify_deadline = start + wait
    deadline = start + float(cfg["session-timeout-s"])
    _write(report_file, status)
    while time.monotonic() < deadline:
        changed = False
        searching = run.looking() and time.monotonic() < identify_deadline
        if searching:
            run.ask_new_nodes()
        elif "invited_s" not in status:
            status["invited_s"] = time.monotonic() - start
            _finish_search(status, run, invited, wait)
            changed = True
        if not (searching or run.identify or run.pending):
            break
        replies = list(grid.pull_messages(set(run.identify) | set(run.pending)))
        for reply in replies:
            run.receive(reply)
        if run.identify and time.monotonic() > identify_deadline:
            for node in run.identify.values():
                status["refused"][str(node)] = f"did not say who it is within {wait:g} s"
            run.identify.clear()
        if replies or changed:
            _write(report_file, status)
        time.sleep(0.2)
    status["done"] = not (run.identify or run.pending)
    status["seconds"] = time.monotonic() - start
    _write(report_file, status)


def _finish_search(status: dict, run: Invitations, invited: list[str], wait: float) -> None:
    """No more SuperNodes are looked for: invited users that no SuperNode claimed are lost."""
    claimed = len(run.binding.nodes)
    if claimed < run.binding.users:
        status["errors"].append(f"only {claimed} of {run.binding.users} users' SuperNodes")
    for user_id in invited:
        if user_id not in run.binding.nodes and user_id not in status["lost"]:
            status["lost"][user_id] = f"no SuperNode ran it within {wait:g} s"


def _record(status: dict, reply: Message) -> None:
    node = reply.metadata.src_node_id
    record = reply.content["report"]
    status["reports"][str(record["user-id"])] = {"node_id": node, **json.loads(str(record["json"]))}
