"""Single precision, the default: the pinned numbers at the tolerance single precision gives.

The ADMM strategies' O(n) per-round products run in complex64 by default (``precision``
``single``, as the authors' code runs; whitening, S S^H, the G-step solve and the F-step stay
double). tests/test_core_regression.py pins ``precision="double"`` to its reference; this file
pins the default to the same reference (``tests/data/core_reference.json``, every case):

* every number within :data:`SINGLE_RTOL` relative. Measured on this reference: at most 1.4e-5
  (a standard deviation over the two seeds: a difference of two close values), 3.1e-6 for a
  value itself (a primal residual), 6e-7 for a test MSE; every accuracy equal. The tolerance
  leaves a factor of about 7 for other CPUs' BLAS rounding; a behaviour change moves these
  figures by far more.
* beyond the numbers, exactly two differences, both by design: the config says ``single``, and
  each ADMM user's HandshakeAccept announces SINGLE (3 more bytes per user in the handshake).

On the paper's presets (digits latents) single and double precision agree to the paper's
reporting precision: ``benchmarks/precision_presets.py``, table in docs/performance.md.
"""

from __future__ import annotations

import json
import math

import pytest
from semalign.common.config import LEGACY_PRECISION, AlignmentConfig
from semalign.common.records import RunResult
from semalign.common.strategies import get_strategy
from semalign.common.wire import parse_ap_message
from semalign.proto import semalign_pb2 as pb
from test_core_regression import BASE, IGNORED, REFERENCE, run_cases

from semalign.experiments import plan as sweep_plan

#: relative tolerance of single precision against the double-precision reference (measured
#: 1.4e-5 at most, see above)
SINGLE_RTOL = 1e-4
#: the accept's ``precision`` field (SINGLE): bytes it adds to each ADMM user's handshake
ACCEPT_FIELD_BYTES = 3
#: the reference's settings at the default precision
DEFAULT_BASE = {k: v for k, v in BASE.items() if k != "precision"}


def test_the_default_precision_is_single():
    assert AlignmentConfig().precision == "single"
    assert LEGACY_PRECISION == "double"  # what files and table rows without the field ran


def _compare(new, old, where: str, handshake_extra: int) -> None:
    """``new`` (single) against ``old`` (the double reference): numbers within SINGLE_RTOL,
    the precision and the handshake bytes as described above, everything else equal."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and list(new) == list(old), where
        for key in old:
            if key not in IGNORED:
                _compare(new[key], old[key], f"{where}.{key}", handshake_extra)
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _compare(a, b, f"{where}[{i}]", handshake_extra)
    elif where.endswith(".config.precision"):
        assert (old, new) == ("double", "single"), where
    elif where.endswith((".handshake.bytes_down", ".traffic.bytes_down")):
        assert new - old == handshake_extra, f"{where}: {new!r} != {old!r} + {handshake_extra}"
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, (int, float)), f"{where}: {new!r} != {old!r}"
        close = math.isclose(new, old, rel_tol=SINGLE_RTOL, abs_tol=1e-9)
        assert close, f"{where}: {new!r} != {old!r}"
    else:
        assert new == old and type(new) is type(old), f"{where}: {new!r} != {old!r}"


def test_the_default_agrees_with_the_double_precision_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    results = json.loads(json.dumps(run_cases(tmp_path / "lat", DEFAULT_BASE)))
    assert list(results) == list(reference)
    for name, result in results.items():
        assert result["config"]["precision"] == "single", name
        admm = get_strategy(result["strategy"]).has_rounds
        extra = ACCEPT_FIELD_BYTES * len(result["users"]) if admm else 0
        old = dict(reference[name])
        # fields added to the config after the reference was written, at the reference's values
        config = {k: v for k, v in result["config"].items() if k in old["config"]}
        _compare({**result, "config": config}, old, name, extra)


def test_the_accept_announces_the_precision():
    from test_speed import _session

    for precision, code in (("single", pb.SINGLE), ("double", 0)):
        config = AlignmentConfig(
            antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=2, precision=precision
        )
        ap, users, _ = _session(config)
        accept = parse_ap_message(ap.handshake(users[0].handshake_request())[1]).accept
        assert accept.precision == code, precision


@pytest.mark.parametrize("where", ["results", "config-file"])
def test_a_file_without_precision_ran_double(where):
    """A results JSON older than the field ran double precision, whatever the default is now."""
    from semalign.commands.config_files import results_config

    data = json.loads(REFERENCE.read_text())["fed"]
    data["config"] = {k: v for k, v in data["config"].items() if k != "precision"}
    if where == "results":
        assert RunResult.from_dict(data).config.precision == "double"
    else:
        assert results_config(data["config"])["precision"] == "double"


def test_single_cells_are_new_cells_and_double_cells_keep_their_keys():
    """A sweep table of an older version ran double precision: its cells keep their keys; the
    default's cells (single) are other cells, never found among those rows. Baselines do not
    read the precision: one cell whatever it says."""
    spec = sweep_plan.ScenarioSpec("/x", "ap_enc", ("user_enc0",), "0123456789abcdef")
    double = AlignmentConfig(precision="double")
    assert sweep_plan.cell_key(spec, "g", AlignmentConfig()) != sweep_plan.cell_key(
        spec, "g", double
    )
    top_k = AlignmentConfig(strategy="top-k")
    assert sweep_plan.cell_key(spec, "g", top_k) == sweep_plan.cell_key(
        spec, "g", top_k.model_copy(update={"precision": "double"})
    )
