"""The strategy registry, its AP and user halves, the typed session offer and results records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from semalign.client.strategies import USER_STRATEGIES, UserStrategy
from semalign.client.user import User
from semalign.common import strategies
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
    strategy_for_code,
    strategy_help,
    strategy_names,
)
from semalign.common.wire import parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.session import SessionDriver
from semalign.server.strategies import AP_STRATEGIES, ApStrategy
from test_core_protocol import _session
from test_core_regression import ADDED_CONFIG, REFERENCE

from semalign.engine.loopback import LoopbackLink


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
    assert set(AP_STRATEGIES) == set(strategy_names()) == set(USER_STRATEGIES)


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
    networked = dict(reference["top-k"])
    networked["seeds"] = [{**s, "wire": {"transport": "grpc"}} for s in networked["seeds"]]
    networked["network"] = {"rounds": 0}
    run = RunResult.from_dict(networked)
    assert run.seeds[0].strategy_info == {"baseline": networked["seeds"][0]["baseline"]}
    back = run.to_dict()
    for key in set(ADDED_CONFIG) - set(networked["config"]):
        assert back["config"].pop(key) == ADDED_CONFIG[key], key
    assert back == networked


# ------------------------------------------------------------------ a strategy added from outside
class _NoOp(ApStrategy):
    """No alignment: the AP sends zeros."""

    def encode(self, x, state):
        return np.zeros((self.ap.symbols, x.shape[1]), dtype=np.complex128), None


class _NoOpUser(UserStrategy):
    """Estimates zeros: decodes to the user's pilot mean."""

    def estimate(self, symbols, indices):
        return np.zeros((self.user.y.shape[0], symbols.shape[1]), dtype=np.complex128)


def test_a_strategy_is_one_spec_one_ap_class_and_one_user_class(monkeypatch):
    spec = StrategySpec("noop", "baseline", label="No alignment", description="no alignment")
    monkeypatch.setitem(strategies._REGISTRY, "noop", spec)
    monkeypatch.setitem(AP_STRATEGIES, "noop", _NoOp)
    monkeypatch.setitem(USER_STRATEGIES, "noop", _NoOpUser)
    ap, users, test = _session("noop", channel_uses=1, antennas_tx=2)
    users = [
        User(u.user_id, u.encoder, u.data, 2, 2, 20.0, u.channel_seed, strategy_name="noop")
        for u in users
    ]
    result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(len(test)))
    assert result.rounds == [] and set(result.reports) == {"user1", "user2"}
    assert all(isinstance(u.strategy, _NoOpUser) for u in users)
    assert result.reports["user1"]["mse_whitened"] == pytest.approx(1.0, rel=0.5)
