"""``semalign plot``: figures from sweep tables (aggregation, files, CLI)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from semalign.common.errors import UsageError
from synthetic import make_latents

from semalign.cli import main
from semalign.experiments import figures as plot
from semalign.experiments.grid import LEGACY_RESEARCH_VALUES, grid_from_options
from semalign.experiments.plan import make_plan
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import COLUMNS, ResultsTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(table: ResultsTable, seed: int, users: int = 3, **params) -> None:
    """Append one run with made-up metrics (accuracy grows with K and SNR)."""
    cell = {
        "strategy": "fed",
        "antennas_tx": 4,
        "antennas_rx": 4,
        "channel_uses": 1,
        "snr_db": 20.0,
        "group": "paper-users",
        "pilot_fraction": 1.0,
        "csi": True,
        "channel": "rayleigh",
        "task_model": "mlp",
        "target": "latents",
        "pilot_selection": "first",
        "user_groups": 1,
        "equalizer": "linear",
        "iterations": 30,
        "rho": 1.0,
        "power": 1.0,
        "ap_encoder": "ap",
        "latents": "/x",
    }
    cell.update(params)
    cell_key = "c" + str(abs(hash(tuple(sorted(cell.items())))))[:15]
    rng = np.random.default_rng(seed)
    d_ap = 64
    base = 0.3 + 0.02 * cell["channel_uses"] + 0.005 * cell["snr_db"]
    rows = []
    for u in range(users):
        row = {c: "" for c in COLUMNS}
        row.update(cell)
        row.update(
            run_key=f"{cell_key}-{seed}",
            cell_key=cell_key,
            run_rows=users,
            antennas=f"{cell['antennas_tx']}x{cell['antennas_rx']}",
            d_ap=d_ap,
            zeta=cell["channel_uses"] / (d_ap / 2),
            seed=seed,
            user=f"user{u + 1}",
            encoder=f"enc{u}",
            accuracy=min(1.0, base + 0.05 * rng.standard_normal()),
            native_accuracy=0.95,
            mse=1.0,
            mse_whitened=0.5,
            network_mse=1.0 / (1 + cell["channel_uses"]) + 0.01 * seed,
            last_round_mse=0.5,
            data_channel_uses=cell["channel_uses"],
            index_bits_per_sample=0,
            index_channel_uses=0,
            seconds=1.0,
        )
        rows.append(row)
    table.append(rows)


@pytest.fixture(scope="module")
def full_table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plot") / "t.csv"
    with ResultsTable(path) as table:
        for seed in (1, 2, 3):
            # fig2: 2 antenna configurations x 3 K x 4 strategies
            for strategy, ant, k in itertools.product(
                ("fed", "multi-link", "first-k", "top-k"), (1, 2), (1, 2, 4)
            ):
                fake_run(
                    table, seed, strategy=strategy, antennas_tx=ant, antennas_rx=ant, channel_uses=k
                )
            # fig3: groups x pilot fractions
            for group, frac, k in itertools.product(
                ("homogeneous", "heterogeneous"), (0.1, 1.0), (1, 2, 4)
            ):
                fake_run(table, seed, group=group, pilot_fraction=frac, channel_uses=k)
            # snr
            for strategy, snr, k in itertools.product(("fed", "first-k"), (-10.0, 10.0), (1, 4)):
                fake_run(
                    table, seed, strategy=strategy, snr_db=snr, channel_uses=k, group="snr-users"
                )
    return path


def test_t_interval_of_known_values():
    # mean 3, s = sqrt(2.5) (ddof=1), t_{0.975, 4} = 2.7764451: 2.7764451 * sqrt(2.5 / 5)
    mean, half = plot.t_interval([1, 2, 3, 4, 5])
    assert mean == 3.0 and half == pytest.approx(1.9632431614775572, rel=1e-12)
    # two seeds: t_{0.975, 1} = 12.7062047, s / sqrt(2) = 0.05
    assert plot.t_interval([0.8, 0.9])[1] == pytest.approx(0.6353102368087346, rel=1e-12)
    # 90 %: t_{0.95, 4} = 2.1318468
    assert plot.t_interval([1, 2, 3, 4, 5], 0.90)[1] == pytest.approx(
        2.131846786326649 * np.sqrt(0.5), rel=1e-12
    )
    # missing values are left out; one value has no interval
    assert plot.t_interval([1, None, 2, 3, float("nan"), 4, 5])[1] == pytest.approx(
        1.9632431614775572
    )
    assert np.isnan(plot.t_interval([0.7])[1]) and np.isnan(plot.t_interval([])[0])
    assert plot.band_halfwidth([1, 2, 3, 4, 5], "std") == pytest.approx(np.sqrt(2.0))  # ddof=0
    assert np.isnan(plot.band_halfwidth([1, 2, 3], "none"))
    with pytest.raises(ValueError, match="band"):
        plot.band_halfwidth([1, 2], "sem")


def test_points_band_over_their_seeds(tmp_path):
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        for seed in (1, 2, 3):
            fake_run(table, seed, users=2)
    (point,) = plot.aggregate(plot.load_rows([path]))
    per_seed = point.samples["accuracy"]
    assert len(per_seed) == 3 and np.mean(per_seed) == pytest.approx(point.accuracy)
    ci = point.band("accuracy", plot.FigureStyle())
    assert ci == pytest.approx(4.302652729911275 * np.std(per_seed, ddof=1) / np.sqrt(3))
    assert point.band("accuracy", plot.FigureStyle(band="std")) == point.accuracy_std
    assert np.isnan(point.band("accuracy", plot.FigureStyle(band="none")))


def test_aggregate_mean_and_std_over_seeds(tmp_path):
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        for seed in (1, 2):
            fake_run(table, seed, users=2)
    rows = plot.load_rows([path, path])  # the same table twice: each run counted once
    assert len(rows) == 4
    (point,) = plot.aggregate(rows)
    per_seed = [np.mean([r["accuracy"] for r in rows if r["seed"] == s]) for s in (1, 2)]
    assert point.seeds == 2
    assert point.accuracy == pytest.approx(np.mean(per_seed))
    assert point.accuracy_std == pytest.approx(np.std(per_seed))
    assert point.network_mse == pytest.approx(0.5 + 0.015)
    assert point.test_mse == pytest.approx(1.0) and point.test_mse_std == 0.0


def test_every_figure_is_written(full_table, tmp_path):
    written = plot.make_figures(plot.load_rows([full_table]), tmp_path)
    assert set(written) == {"fig2", "fig3", "snr"}
    for name, paths in written.items():
        assert paths, name
        for path in paths:
            assert path.exists() and path.stat().st_size > 1000, path
        pngs = [p for p in paths if p.suffix == ".png"]
        assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
        assert any(p.suffix == ".pdf" for p in paths)
    # fig2 has one file per context (group): paper-users and snr-users have >= 2 zeta values
    fig2 = {p.name for p in written["fig2"] if p.suffix == ".png"}
    assert len(fig2) == 3  # paper-users, snr-users at -10 dB and at 10 dB


def test_missing_data_gives_no_figure(tmp_path):
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        fake_run(table, 1)
    written = plot.make_figures(plot.load_rows([path]), tmp_path / "out")
    assert written == {"fig2": [], "fig3": [], "snr": []}
    assert main(["plot", "--table", str(path), "--out", str(tmp_path / "out")]) == 2


def test_plot_cli_after_a_real_tiny_sweep(tmp_path, capsys):
    root, ap, users = make_latents(tmp_path / "lat", n_train=200, n_test=60)
    grid = grid_from_options(
        None,
        {
            "strategies": ("fed", "first-k"),
            "channel_uses": (1, 2),
            "antennas": ("1x1",),
            "seeds": (1, 2),
            "groups": ("+".join(users),),
            "iterations": 3,
            "ap": ap,
        },
    )
    plan = make_plan(grid, root, {"+".join(users): users})
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    out = tmp_path / "fig"
    assert main(["plot", "--table", str(table), "--out", str(out), "--formats", "png"]) == 0
    png = out / "fig2-accuracy-vs-zeta.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert "fig2" in capsys.readouterr().err
    assert main(["plot", "--table", str(table), "--figures", "fig9"]) == 2
    assert main(["plot", "--table", str(tmp_path / "none.csv")]) == 2


def test_default_tables_draw_each_figure_from_its_preset_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("sweep-fig2.csv", "sweep-snr.csv", "sweep-mine.csv"):
        (results / name).write_text("")
    sources = plot.figure_sources(["fig2", "fig3", "snr"], None, results)
    assert sources["fig2"] == (results / "sweep-fig2.csv",)
    assert sources["snr"] == (results / "sweep-snr.csv",)
    assert sources["fig3"] == tuple(sorted(results.glob("sweep-*.csv")))  # no own table: all
    given = plot.figure_sources(["fig2", "snr"], [str(results / "sweep-mine.csv")], results)
    assert set(given.values()) == {(results / "sweep-mine.csv",)}
    with pytest.raises(UsageError, match="no table given"):
        plot.figure_sources(["fig2"], None, tmp_path / "empty")


def test_aggregation_matches_the_reference():
    """Points of the reference sweep table as the plot of commit 3848999 computed them."""
    import json
    import math

    data = Path(__file__).parent / "data"
    want = json.loads((data / "plot_reference.json").read_text())
    rows = plot.load_rows([data / "sweep_reference.csv"])

    def same(a, b) -> bool:
        if isinstance(b, dict):
            return set(a) == set(b) and all(same(a[k], b[k]) for k in b)
        if b == "nan":
            return isinstance(a, float) and math.isnan(a)
        if isinstance(b, float) and not isinstance(a, bool):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return a == b

    # the reference's fields (points now also keep their per-seed samples, for the bands, and
    # the channel, baseline fit and research options among their parameters: those of then here)
    added = {"channel": "rayleigh", **LEGACY_RESEARCH_VALUES}
    aggregated = plot.aggregate(rows)
    for p in aggregated:
        assert {k: p.params.pop(k) for k in added} == added
        assert p.params.pop("baseline_fit") in ("", "received")
        # a schema-1 table's baselines selected among whitened symbols, and say so
        selection = "whitened-symbols" if p.params["strategy"] in ("first-k", "top-k") else ""
        assert p.params.pop("baseline_selection") == selection
    points = [{k: p.__dict__[k] for k in want["points"][0]} for p in aggregated]
    assert len(points) == len(want["points"])
    assert all(same(g, w) for g, w in zip(points, want["points"], strict=True))
    summary = [
        {k: v for k, v in r.items() if k not in {*added, "baseline_fit", "baseline_selection"}}
        for r in plot.summary_rows(rows)
    ]
    assert all(same(g, w) for g, w in zip(summary, want["summary_rows"], strict=True))


def _drawn(monkeypatch) -> list[dict]:
    """Each figure the drawing saves, measured before it is closed: the figure, its legend's
    and its axes' boxes on the canvas (pixels)."""
    drawn = []
    original = plot._save

    def measure(fig, *args, **kwargs):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        drawn.append(
            {
                "fig": fig,
                "legends": [legend.get_window_extent(renderer) for legend in fig.legends],
                "axes": [ax.get_window_extent(renderer) for ax in fig.axes],
            }
        )
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plot, "_save", measure)
    return drawn


def test_figure_conventions(full_table, tmp_path, monkeypatch):
    """zeta in % on a log axis, 95 % t bands, legend outside every axes, 200 dpi PNGs."""
    from PIL import Image

    drawn = _drawn(monkeypatch)
    rows = plot.load_rows([full_table])
    written = plot.make_figures(rows, tmp_path, ["fig2", "fig3"], ["png"])
    assert len(drawn) == len(written["fig2"]) + len(written["fig3"]) >= 2
    for info in drawn:
        (legend,) = info["legends"]
        for ax, box in zip(info["fig"].axes, info["axes"], strict=True):
            assert ax.get_xscale() == "log" and "(%)" in ax.get_xlabel()
            assert not legend.overlaps(box), "legend over an axes"
            assert legend.y1 < box.y0  # below the panels
            assert not ax.get_legend()  # no legend inside a panel
    # the fed line of fig2's first panel: x = zeta in %, band = mean +/- t half-width
    fig = drawn[0]["fig"]
    ax = fig.axes[0]
    line = next(line for line in ax.get_lines() if line.get_label().startswith("Federated"))
    points = sorted(
        (
            p
            for p in plot.aggregate(rows)
            if p.params["strategy"] == "fed"
            and p.params["antennas"] == "1x1"
            and p.params["group"] == "paper-users"
        ),
        key=lambda p: p.params["zeta"],
    )
    assert list(line.get_xdata()) == pytest.approx([p.params["zeta"] * 100 for p in points])
    band = ax.collections[0].get_paths()[0].vertices
    halves = [p.band("accuracy", plot.FigureStyle()) for p in points]
    assert all(h > 0 for h in halves)
    top = max(p.accuracy + h for p, h in zip(points, halves, strict=True))
    assert max(band[:, 1]) == pytest.approx(top)
    assert "95 % CI" in fig._suptitle.get_text()
    for path in written["fig2"] + written["fig3"]:
        assert Image.open(path).info["dpi"][0] == pytest.approx(200, abs=0.5)


def test_figure_options(full_table, tmp_path, monkeypatch, capsys):
    drawn = _drawn(monkeypatch)
    style = plot.FigureStyle(band="std", x_scale="linear", dpi=150)
    plot.make_figures(plot.load_rows([full_table]), tmp_path, ["fig2"], ["png"], style)
    assert all(ax.get_xscale() == "linear" for ax in drawn[0]["fig"].axes)
    assert "± 1 std" in drawn[0]["fig"]._suptitle.get_text()
    out = tmp_path / "cli"
    table = str(full_table)
    args = ["plot", "--table", table, "--out", str(out), "--figures", "snr", "--formats", "png"]
    assert main([*args, "--band", "std", "--x-scale", "linear", "--dpi", "150"]) == 0
    assert main([*args, "--band", "none"]) == 0
    for bad in (["--confidence", "1.5"], ["--dpi", "10"]):
        capsys.readouterr()
        assert main([*args, *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):  # argparse's choices
        main([*args, "--band", "sem"])


def test_targets_and_baseline_fits_are_told_apart(tmp_path, monkeypatch):
    """A table over targets and both baseline fits: one fig2 per target (the paper's target
    keeps the plain name), one line per strategy and fit, never two cells on one line."""
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        for seed, target, k in itertools.product((1, 2), ("latents", "logits"), (1, 2, 4)):
            fake_run(table, seed, strategy="fed", channel_uses=k, target=target)
            for fit in ("received", "full"):
                fake_run(
                    table, seed, strategy="first-k", channel_uses=k, target=target, baseline_fit=fit
                )
    drawn = _drawn(monkeypatch)
    written = plot.make_figures(plot.load_rows([path]), tmp_path / "out", ["fig2"], ["png"])
    stem = "fig2-accuracy-vs-zeta-paper-users-snr20-pilots100-csi"
    assert {p.name for p in written["fig2"]} == {f"{stem}.png", f"{stem}-targetlogits.png"}
    for info in drawn:
        lines = {line.get_label(): line for line in info["fig"].axes[0].get_lines()}
        assert {"First-K, received fit", "First-K, full fit", "Federated (shared F)"} <= set(lines)
        assert all(len(line.get_xdata()) == 3 for lab, line in lines.items() if "native" not in lab)
        assert lines["First-K, full fit"].get_linestyle() == "--"
    assert any("target logits" in info["fig"]._suptitle.get_text() for info in drawn)


def test_one_seed_names_no_band(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        for k in (1, 2):
            fake_run(table, 1, channel_uses=k)
            fake_run(table, 1, channel_uses=k, strategy="first-k")
    drawn = _drawn(monkeypatch)
    plot.make_figures(plot.load_rows([path]), tmp_path / "out", ["fig2"], ["png"])
    title = drawn[0]["fig"]._suptitle.get_text()
    assert "one seed, no band" in title and "CI" not in title
