"""``--workdir`` is parsed to an absolute path: Flower's SuperLink and SuperNodes read their
homes under it from other working folders, so a relative one would not be found there."""

from __future__ import annotations

import os

import pytest

from semalign.cli import build_parser


@pytest.mark.parametrize("command", ["run", "ap"])
def test_a_relative_workdir_is_made_absolute_where_it_is_parsed(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args([command, "--workdir", "work/here"])
    assert os.path.isabs(args.workdir)
    assert os.path.realpath(args.workdir) == os.path.realpath(tmp_path / "work" / "here")


def test_no_workdir_stays_none():
    assert build_parser().parse_args(["run"]).workdir is None
