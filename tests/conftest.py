import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser):
    parser.addoption(
        "--reference",
        default=None,
        metavar="PATH",
        help="checkout of the authors' code (SPAICOM/multi-agent-semantic-alignment) for "
        "tests/test_reference_crosscheck.py (or set SEMALIGN_REFERENCE)",
    )
