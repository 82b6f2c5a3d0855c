"""The strategy registry, its AP and user halves, the typed session offer and results records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from semalign.client.strategies import USER_STRATEGIES, UserStrategy, register_user_strategy
from semalign.client.user import User
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.errors import ProtocolError, UsageError
from semalign.common.io import json_safe
from semalign.common.records import RunResult, SeedResult
from semalign.common.strategies import (
    StrategyError,
    StrategySpec,
    UnknownStrategy,
    admm_strategy_names,
    get_strategy,
    register_strategy,
    strategies_with,
    strategy_for_code,
    strategy_help,
    strategy_names,
    unregister_strategy,
)
from semalign.common.wire import parse_user_message
from semalign.deploy.serving.display import Display
from semalign.proto import semalign_pb2 as pb
from semalign.server.session import SessionDriver
from semalign.server.strategies import AP_STRATEGIES, ApStrategy, register_ap_strategy
from semalign.server.strategies.shared_admm import SharedAdmm
from test_core_protocol import _session
from test_core_regression import ADDED_CONFIG, REFERENCE

from semalign.cli import build_parser
from semalign.engine.grouping import check_groupable
from semalign.engine.loopback import LoopbackLink
from semalign.experiments.figures import strategy_style
from semalign.experiments.grid import SweepGrid, grid_from_options, preset_fields


def test_registry_lists_the_paper_strategies_in_order():
    assert strategy_names() == ("fed", "multi-link", "first-k", "top-k")
    assert admm_strategy_names() == ("fed", "multi-link")
    assert strategy_help() == (
        "fed: shared F by federated ADMM; multi-link: one F per user; "
        "first-k/top-k: the baselines of section IV"
    )
    codes = {name: get_strategy(name).proto_code for name in strategy_names()}
    assert codes == {
        "fed": pb.FED,
        "multi-link": pb.MULTI_LINK,
        "first-k": pb.FIRST_K,
        "top-k": pb.TOP_K,
    }
    assert strategy_for_code(pb.TOP_K).name == "top-k"
    with pytest.raises(ProtocolError, match="unknown strategy code 99"):
        strategy_for_code(99)


def test_every_strategy_has_an_ap_half_and_a_user_half():
    assert set(AP_STRATEGIES.names()) == set(strategy_names()) == set(USER_STRATEGIES.names())
    assert AP_STRATEGIES.get("fed") is SharedAdmm and SharedAdmm.name == "fed"
    assert USER_STRATEGIES.get("fed") is USER_STRATEGIES.get("multi-link")
    with pytest.raises(UnknownStrategy):
        AP_STRATEGIES.get("nope")


def test_capabilities_of_the_paper_strategies():
    assert strategies_with("has_rounds") == admm_strategy_names() == ("fed", "multi-link")
    assert strategies_with("shared_pre_equalizer") == ("fed",)
    assert strategies_with("secure_aggregation") == ("fed",)
    assert strategies_with("index_bits") == ("top-k",)
    styles = [strategy_style(name) for name in strategy_names()]
    assert len({(s["color"], s["marker"]) for s in styles}) == len(styles)
    assert strategy_style("fed", variant=1)["linestyle"] != strategy_style("fed")["linestyle"]
    assert strategy_style("gone")["label"] == "gone"  # an older table's strategy


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"shared_pre_equalizer": True}, "shared F needs ADMM rounds"),
        ({"index_bits": True, "family": "admm"}, "index side information"),
        ({"secure_aggregation": True, "family": "admm"}, "secure aggregation needs a shared F"),
        ({"family": "other"}, "family admm or baseline"),
    ],
)
def test_specs_refuse_inconsistent_capabilities(fields, message):
    args = {"name": "x", "family": "baseline", "label": "X", "description": "x", **fields}
    with pytest.raises(StrategyError, match=message):
        StrategySpec(**args)


def test_a_half_registers_once_for_a_known_name_and_its_side():
    with pytest.raises(StrategyError, match="access-point half already"):
        register_ap_strategy("fed")(SharedAdmm)
    with pytest.raises(UnknownStrategy):
        register_user_strategy("nope")(UserStrategy)
    with pytest.raises(StrategyError, match="is not a UserStrategy"):
        register_user_strategy("fed")(SharedAdmm)
    assert USER_STRATEGIES.names() == ("fed", "multi-link", "first-k", "top-k")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownStrategy, match="did you mean 'top-k'"):
        get_strategy("topk")
    assert issubclass(UnknownStrategy, UsageError) and issubclass(UnknownStrategy, ValueError)
    with pytest.raises(ValidationError, match="did you mean 'multi-link'"):
        AlignmentConfig(strategy="multilink")
    with pytest.raises(StrategyError, match="already registered"):
        register_strategy(StrategySpec("fed", "admm", label="again", description="again"))


def test_session_offer_carries_a_typed_config():
    config = AlignmentConfig(strategy="top-k", seed=7)
    offer = SessionOffer("abc", 1, 3, config)
    back = SessionOffer.from_header(offer.to_header())
    assert back == offer and back.config is not offer.config and back.last is False
    assert SessionOffer("abc", 1, 3, config.model_dump()).config == config  # dicts validated
    header = json.loads(offer.to_header())
    assert header["config"]["strategy"] == "top-k" and header["session_id"] == "abc"
    for bad in ("{", "[]", '{"session_id": "s"}', offer.to_header().replace("top-k", "tpo-k")):
        with pytest.raises(ProtocolError, match="malformed session offer"):
            SessionOffer.from_header(bad)


def test_user_set_up_for_another_strategy_refuses_the_accept():
    ap, users, _ = _session("fed")
    user = users[0]
    user.strategy_name = "top-k"
    reply = user.handle(ap.handshake(user.handshake_request())[1])
    msg = parse_user_message(reply)
    assert msg.WhichOneof("body") == "error" and "set up for top-k" in msg.error.message
    assert user.accept is None and user.strategy is None


def test_records_read_back_the_results_json_unchanged():
    reference = json.loads(REFERENCE.read_text())
    for name, results in reference.items():
        run = RunResult.from_dict(results)
        back = json.loads(json.dumps(json_safe(run.to_dict())))
        for key in set(ADDED_CONFIG) - set(results["config"]):  # fields newer than the file
            assert back["config"].pop(key) == ADDED_CONFIG[key], key
        assert back == results, name
        assert run.strategy == results["strategy"] and run.seeds[0].seed == 27
        assert isinstance(run.seeds[0], SeedResult)
    stored = json.loads((REFERENCE.parent / "results_networked.json").read_text())
    networked = dict(reference["top-k"])  # with a stored networked run's wire and network
    networked["seeds"] = [{**s, "wire": stored["seeds"][0]["wire"]} for s in networked["seeds"]]
    networked["network"] = stored["network"]
    run = RunResult.from_dict(networked)
    assert run.seeds[0].strategy_info == {"baseline": networked["seeds"][0]["baseline"]}
    back = run.to_dict()
    for key in set(ADDED_CONFIG) - set(networked["config"]):
        assert back["config"].pop(key) == ADDED_CONFIG[key], key
    assert back == networked


def test_a_compact_round_keeps_its_step_for_g_and_drops_an_earlier_g():
    """G_l of a compact round is formed from the round's step when first used, whatever G_l was
    before: an order-dependent reset (the step cleared by the ``g`` setter after being set)
    would leave no equalizer and the session would drop every user."""
    ap, users, test = _session("fed", protocol="compact", iterations=2)
    for user in users:
        user.round_protocols = ("compact",)
    result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(len(test)))
    assert all(result.reports[u.user_id].accuracy is not None for u in users)
    strategy = users[0].strategy
    step = strategy._step
    assert step is not None  # noisy channel: the final broadcast took the compact step
    formed = step.equalizer(strategy.cross)
    np.testing.assert_array_equal(strategy.g, formed)
    strategy.g = np.zeros_like(formed)  # an explicit G_l drops the step ...
    assert strategy._step is None and not strategy.g.any()
    strategy._defer_g(step)  # ... and a deferred one drops the explicit G_l
    np.testing.assert_array_equal(strategy.g, formed)


# ------------------------------------------------------------------ a strategy added from outside
def _register_outside(name: str, family: str, **capabilities) -> None:
    """What a module outside the package does: a spec, then one decorated class per side."""
    register_strategy(
        StrategySpec(
            name,
            family,
            label=f"Outside {name}",
            description="from outside",
            color="tab:pink",
            marker="X",
            linestyle=":",
            **capabilities,
        )
    )

    @register_ap_strategy(name)
    class _NoOp(ApStrategy):
        """No alignment: the AP sends zeros."""

        def encode(self, x, state):
            return np.zeros((self.ap.symbols, x.shape[1]), dtype=np.complex128), None

    @register_user_strategy(name)
    class _NoOpUser(UserStrategy):
        """Estimates zeros: decodes to the user's pilot mean."""

        def estimate(self, symbols, indices):
            return np.zeros((self.user.y.shape[0], symbols.shape[1]), dtype=np.complex128)


@pytest.fixture
def outside():
    """Strategies registered from outside the package: ``noop`` (a baseline) and ``shared``
    (declares ADMM rounds and a shared F; never run); removed again afterwards."""
    _register_outside("noop", "baseline")
    _register_outside("shared", "admm", shared_pre_equalizer=True)
    yield
    for name in ("noop", "shared"):
        AP_STRATEGIES.unregister(name)
        USER_STRATEGIES.unregister(name)
        unregister_strategy(name)


def test_a_strategy_is_one_spec_one_ap_class_and_one_user_class(outside):
    ap, users, test = _session("noop", channel_uses=1, antennas_tx=2)
    users = [
        User(u.user_id, u.encoder, u.data, 2, 2, 20.0, u.channel_seed, strategy_name="noop")
        for u in users
    ]
    result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(len(test)))
    assert result.rounds == [] and set(result.reports) == {"user1", "user2"}
    assert all(type(u.strategy) is USER_STRATEGIES.get("noop") for u in users)
    assert result.reports["user1"].mse_whitened == pytest.approx(1.0, rel=0.5)


def _choices(parser, command: str, dest: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == dest)


def test_a_strategy_from_outside_reaches_the_cli_sweep_figures_and_display(outside):
    parser = build_parser()
    for command in ("simulate", "run", "ap"):
        assert {"noop", "shared"} <= set(_choices(parser, command, "strategy").choices)
    assert "noop" in _choices(parser, "sweep", "strategies").help
    grid = SweepGrid(channel_uses=(1,), user_groups=(1, 2), equalizers=("linear", "widely-linear"))
    assert {"noop", "shared"} <= set(grid.strategies)
    cells = {(c.strategy, c.user_groups, c.equalizer) for _, c in grid.configs()}
    assert ("shared", 2, "widely-linear") in cells and ("fed", 2, "linear") in cells
    assert {c for c in cells if c[0] == "noop"} == {("noop", 1, "linear")}
    for preset in ("fig2", "snr"):  # the paper's all-strategy presets, read after registering
        assert preset_fields(preset)["strategies"] == strategy_names()
        assert {"noop", "shared"} <= set(grid_from_options(preset, {}).strategies)
    assert grid_from_options("fig3", {}).strategies == ("fed",)
    assert strategy_style("noop", variant=1) == {
        "label": "Outside noop",
        "color": "tab:pink",
        "marker": "X",
        "linestyle": "-",
    }
    assert strategy_style("noop")["linestyle"] == ":"
    seeds = [27, 42]
    shared = Display(AlignmentConfig(strategy="shared", iterations=7), seeds, 2, quiet=True)
    noop = Display(AlignmentConfig(strategy="noop", iterations=7), seeds, 2, quiet=True)
    assert (shared.steps, noop.steps) == (7, 1)
    check_groupable("shared")
    with pytest.raises(UsageError, match="needs strategy fed, shared"):
        check_groupable("noop")
    with pytest.raises(ValidationError, match="needs an ADMM strategy"):
        AlignmentConfig(strategy="noop", equalizer="widely-linear")
