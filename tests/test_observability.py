"""Operator observability of the AP: Prometheus metrics that agree with the results file, the
gRPC health service and its probe (plaintext and mutual TLS), json log lines with the event's
session, user and round, and the option checks of ``--metrics-listen``.

The session runs over real gRPC on 127.0.0.1 with in-process users (threads running the user
process's stream loop), through the AP side ``semalign ap`` and ``semalign run`` use
(:mod:`semalign.deploy.serving.ap_side`).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace

import pytest
from semalign.common.config import AlignmentConfig
from semalign.deploy.commands import health as healthcheck
from semalign.deploy.serving.ap_side import load_plan, start_service
from semalign.deploy.serving.display import Display
from semalign.deploy.serving.launcher import free_port
from semalign.server.serve_settings import ServeSettings
from semalign.server.service import AlignmentService, start_server
from semalign.server.session import WaitPolicy
from synthetic import make_latents
from test_cli_files import assert_one_line, run_cli
from test_network_grpc import SECRET, faulty_users, start_users

from semalign.commands.log_format import JsonFormatter

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=4)
SEEDS = [5, 6]
MID_ROUND = 2  # the first seed's round at which the test scrapes mid-session


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=300)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((f"semalign_{name}", tuple(sorted(labels.items()))), 0.0)


def probe(*argv: str) -> tuple[int, str]:
    """``python -m semalign.deploy.commands.health`` in this process: (exit code, its output)."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = healthcheck.main(list(argv))
    return code, out.getvalue().strip()


def crash_user3(uid, msg):
    """A fault for :func:`faulty_users`: user3 raises on the first round broadcast it gets, so
    the AP drops it."""
    if uid == "user3" and msg.WhichOneof("body") == "broadcast":
        raise RuntimeError("user3 crashed")


class Records(logging.Handler):
    """Formats every record of the ``semalign`` loggers with the json formatter."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def run_observed_session(latents, tmp_path):
    """The AP side of ``semalign ap`` with --metrics-listen and --health-listen, three users
    (user3 crashes); scrapes and probes before, during (the first seed's round MID_ROUND) and
    after the sessions. Returns (results, what was observed, json log lines)."""
    from semalign.deploy.serving.ap_side import finish, serve

    root, ap_enc, encoders = latents
    ids = [f"user{i + 1}" for i in range(len(encoders))]
    policy = WaitPolicy(reply_timeout=20, round_deadline=1e-4, stragglers="wait")
    settings = ServeSettings(
        ids,
        join_timeout=30,
        policy=policy,
        metrics_listen=f"127.0.0.1:{free_port()}",
        health_listen=f"127.0.0.1:{free_port()}",
    )
    plan = load_plan(root, ap_enc, CONFIG, SEEDS, settings)
    service, server = start_service(SECRET, plan)
    url, health = plan.endpoints["metrics"], plan.endpoints["health"]
    seen: dict = {"before": probe("--address", health, "--insecure")}
    round_finished = plan.metrics.round_finished

    def observed(record):
        round_finished(record)
        if record.round == MID_ROUND and "mid" not in seen:
            seen["mid"] = scrape(url)
            seen["mid_health"] = probe("--address", health, "--insecure")
            seen["mid_main_port"] = probe("--address", server.address, "--insecure")

    plan.metrics.round_finished = observed
    records = Records()
    logger = logging.getLogger("semalign")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        make = faulty_users(root, crash_user3)
        _, threads, errors = start_users(server.address, root, encoders, make=make)
        display = Display(CONFIG, SEEDS, len(ids), quiet=True)
        served = serve(service, plan, display, lambda: {})
        for thread in threads:
            thread.join(20)
        seen["end"] = scrape(url)
        # the results as written to the file (deploy.serving.finish), read back from it
        out = tmp_path / "results.json"
        finish(served, {}, time.perf_counter(), display, str(out))
        results = json.loads(out.read_text())
        service.close()  # what serve_with_children does once the sessions are over
        seen["closed"] = probe("--address", health, "--insecure")
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
        server.stop()
    seen["stopped"] = probe("--address", health, "--insecure", "--timeout", "2")
    assert isinstance(errors.get("user3"), RuntimeError)
    return results, seen, records.lines


@pytest.fixture(scope="module")
def observed(latents, tmp_path_factory):
    return run_observed_session(latents, tmp_path_factory.mktemp("obs"))


def per_user(blocks, key: str) -> dict[str, int]:
    """user -> the sum of ``key`` (user -> bytes) over ``blocks``."""
    total: dict[str, int] = {}
    for block in blocks:
        for uid, count in block.get(key, {}).items():
            total[uid] = total.get(uid, 0) + count
    return total


def test_scrape_at_the_end_agrees_with_the_results_file(observed):
    results, seen, _ = observed
    end, seeds = seen["end"], results["seeds"]
    assert value(end, "users_joined_total") == sum(len(s["users"]) for s in seeds)
    assert value(end, "users_lost_total") == sum(len(s["dropped"]) for s in seeds) >= 1
    assert value(end, "rejoins_total") == sum(len(s["wire"]["rejoins"]) for s in seeds)
    assert value(end, "stragglers_total") == sum(len(s["wire"]["stragglers"]) for s in seeds)
    rounds = [r for s in seeds for r in s["rounds"]]
    assert value(end, "round_latency_seconds_count") == len(rounds) > 0
    assert value(end, "round_latency_seconds_sum") == pytest.approx(
        sum(r["seconds"] for r in rounds), rel=1e-9
    )
    assert value(end, "current_round") == seeds[-1]["rounds"][-1]["round"]
    for direction in ("down", "up"):
        for phase, blocks in (
            ("round", rounds),
            ("final", [s["phases"]["final"] for s in seeds]),
            ("evaluation", [s["phases"]["evaluation"] for s in seeds]),
        ):
            want = per_user(blocks, f"bytes_{direction}_per_user")
            assert want and all(want.values())
            users = {"user1", "user2", "user3"} | set(want)
            got = {
                uid: value(end, f"bytes_{direction}_total", user=uid, phase=phase) for uid in users
            }
            assert got == {uid: want.get(uid, 0) for uid in users}, (direction, phase)


def test_scrape_mid_session_agrees_with_the_rounds_so_far(observed):
    results, seen, _ = observed
    mid, first = seen["mid"], results["seeds"][0]
    so_far = [r for r in first["rounds"] if r["round"] <= MID_ROUND]
    assert value(mid, "current_round") == MID_ROUND
    assert value(mid, "users_joined_total") == len(first["users"]) == 3
    assert value(mid, "round_latency_seconds_count") == len(so_far)
    want = per_user(so_far, "bytes_down_per_user")
    got = {uid: value(mid, "bytes_down_total", user=uid, phase="round") for uid in want}
    assert got == want
    assert value(mid, "bytes_down_total", user="user1", phase="evaluation") == 0  # not yet


def test_health_serves_during_the_session_and_the_probe_says_so(observed):
    _, seen, _ = observed
    assert seen["before"] == (1, "NOT_SERVING")  # no lobby open yet
    assert seen["mid_health"] == (0, "SERVING")
    assert seen["mid_main_port"] == (0, "SERVING")  # the alignment service's own port too
    assert seen["closed"] == (1, "NOT_SERVING")  # sessions over
    code, line = seen["stopped"]
    assert code == 1 and "no answer" in line and "\n" not in line


def test_json_log_lines_carry_session_user_and_round(observed):
    results, _, lines = observed
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    sessions = {e["session_id"] for e in entries if "session_id" in e}
    assert len(sessions) == len(SEEDS)
    joined = [e for e in entries if e["message"].startswith("handshake: ")]
    assert {(e["user_id"], e["round"]) for e in joined} == {
        ("user1", 0),
        ("user2", 0),
        ("user3", 0),
    }
    dropped = [e for e in entries if e["message"].startswith("dropped user")]
    assert [e["user_id"] for e in dropped] == ["user3"] and dropped[0]["level"] == "WARNING"
    rounds = [e["round"] for e in entries if e["message"].startswith("round ")]
    assert rounds == [r["round"] for s in results["seeds"] for r in s["rounds"]]


def test_json_format_from_the_cli_option_is_one_object_per_line():
    code = (
        "import logging, sys\n"
        "from semalign.cli import main\n"
        "sys.argv = ['semalign']\n"
        "main(['--log-format', 'json', '-v', 'health', '--address', '127.0.0.1:1', '--insecure',\n"
        "      '--timeout', '1'])\n"
        "log = logging.getLogger('semalign.server.session')\n"
        "log.info('two\\nlines', extra={'session_id': 's1', 'user_id': 'user2', 'round': 3})\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("{")]
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines" and first["level"] == "INFO"
    assert (first["session_id"], first["user_id"], first["round"]) == ("s1", "user2", 3)
    assert first["logger"] == "semalign.server.session" and first["time"].endswith("Z")
    assert "ZeroDivisionError" in second["exception"] and "user_id" not in second


def test_probe_with_mutual_tls_needs_a_client_certificate(tmp_path):
    from semalign.common.contract import SessionOffer, TlsFiles
    from semalign.deploy.commands.certs import make_secrets

    secrets = tmp_path / "secrets"
    make_secrets(secrets, ["user1"], names=["ap"])
    ap = secrets / "ap"
    tls = TlsFiles(str(ap / "server.pem"), str(ap / "server.key"), str(ap / "ca.pem"))
    service = AlignmentService(SECRET)
    server = start_server(service, "127.0.0.1:0", tls=tls)
    address = f"localhost:{server.port}"
    try:
        assert probe("--address", address, "--secrets", str(secrets / "user1")) == (
            1,
            "NOT_SERVING",
        )
        service.open_lobby(SessionOffer("s", 0, 1, CONFIG, 1), 1)
        user = ("--address", address, "--secrets", str(secrets / "user1"))
        assert probe(*user) == (0, "SERVING")
        assert probe(*user, "--service", "semalign.v1.Alignment") == (0, "SERVING")
        assert probe(*user, "--service", "no.such.Service")[0] == 1
        code, line = probe("--address", address, "--tls-ca", str(ap / "ca.pem"), "--timeout", "3")
        assert code == 1 and "no answer" in line  # no client certificate: the AP refuses it
        assert probe("--address", address, "--timeout", "3") == (
            2,
            "semalign health: error: TLS is on by default: --secrets DIR or --tls-ca FILE, "
            "or --insecure",
        )
    finally:
        server.stop()


AP_ARGS = ["ap", "--users", "2", "--latents", "{d}", "--insecure", "--out", "{d}/ap.json"]
RUN_ARGS = ["run", "--latents", "{d}", "--insecure", "--out", "{d}/run.json"]


@pytest.mark.parametrize("base", [AP_ARGS, RUN_ARGS], ids=["ap", "run"])
@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1:0", "port must be in 1-65535"),
        ("127.0.0.1:70000", "out of range"),
    ],
)
def test_bad_metrics_address_is_one_line_exit_2(base, listen, expected, tmp_path, capsys):
    code, err = run_cli([*base, "--metrics-listen", listen], tmp_path, capsys)
    assert_one_line(code, err, expected)


@pytest.mark.parametrize("base", [AP_ARGS, RUN_ARGS], ids=["ap", "run"])
def test_metrics_without_prometheus_client_names_the_extra(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    code, err = run_cli([*base, "--metrics-listen", "127.0.0.1:9100"], tmp_path, capsys)
    assert_one_line(code, err, "pip install 'semalign[metrics]'")


def test_bad_health_address_is_one_line_exit_2(tmp_path, capsys):
    code, err = run_cli([*AP_ARGS, "--health-listen", "127.0.0.1:0"], tmp_path, capsys)
    assert_one_line(code, err, "--health-listen")
    code, err = run_cli(["health", "--address", "nowhere", "--insecure"], tmp_path, capsys)
    assert_one_line(code, err, "expected HOST:PORT")


def test_metrics_port_in_use_is_one_line(latents, tmp_path):
    from semalign.common.errors import UsageError

    root, ap_enc, _ = latents
    settings = ServeSettings(1, join_timeout=5, policy=WaitPolicy(reply_timeout=5))
    plan = load_plan(root, ap_enc, CONFIG, [1], settings)
    service, server = start_service(SECRET, plan)
    try:
        taken = f"127.0.0.1:{server.port}"  # the gRPC server holds it
        plan.settings = replace(settings, metrics_listen=taken)
        with pytest.raises(UsageError, match="cannot listen"):
            start_service(SECRET, plan)
    finally:
        server.stop()


@pytest.mark.parametrize("aggregation", ["plain", "secure"])
def test_in_process_driver_feeds_the_metrics_with_its_results(aggregation):
    """The driver alone (loopback links), user2 gone at round 2: every counter equals the
    SessionResult, the secure aggregation's key setup included."""
    import numpy as np
    from semalign.server.metrics import ApMetrics
    from semalign.server.session import SessionDriver
    from test_secure_aggregation import PLAIN, _session

    from semalign.engine.loopback import DroppingLink, LoopbackLink

    config = PLAIN.model_copy(update={"aggregation": aggregation})
    ap, users, test = _session(config)
    links = [LoopbackLink(u) for u in users]
    links[1] = DroppingLink(links[1], dies_at=2)
    metrics = ApMetrics()
    result = SessionDriver(ap, links, metrics=metrics).run(test, np.arange(len(test)))

    def sample(name: str, **labels) -> float:
        return metrics.registry.get_sample_value(f"semalign_{name}", labels) or 0.0

    assert sample("users_joined_total") == len(result.user_order) == 3
    assert sample("users_lost_total") == len(result.dropped) == 1
    assert sample("round_latency_seconds_count") == len(result.rounds) == config.iterations
    phases = ["final", "evaluation"] + (["setup"] if aggregation == "secure" else [])
    assert ("setup" in result.phases) == (aggregation == "secure")
    for direction in ("down", "up"):
        key = f"bytes_{direction}_per_user"
        rounds = [r.to_dict() for r in result.rounds]
        blocks = {"round": rounds, **{p: [result.phases[p].to_dict()] for p in phases}}
        for phase, rows in blocks.items():
            want = per_user(rows, key)
            users = set(want) | set(result.user_order)  # a user the results miss is seen too
            got = {u: sample(f"bytes_{direction}_total", user=u, phase=phase) for u in users}
            assert want and got == {u: want.get(u, 0) for u in users}, (direction, phase)
