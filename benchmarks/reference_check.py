"""Cross-implementation check against the authors' code.

On the same latents (pilots: the train split; evaluation: the test split) and the same channel
matrices (semalign's per-user Hbar_l for a seed, handed to the reference's classes), this runs:

* **fed**: the authors' ``BaseStation``/``Agent`` (shared F, T rounds, rho, P_T; started from
  semalign's F^(0)) against ``semalign.engine.simulate.simulate_seed`` with ``strategy=fed``;
  per-user test MSE in the user's native space, at ``--snr-db``, 40 dB and without noise (the
  reference's ``snr=0`` switch; semalign at 100 dB). "ref, Z + G refresh" transmits the feasible
  Z after a last G-step, as semalign does; "ref as is" transmits F with the previous round's G.
* **First-K / Top-K**: semalign's strategies through the same engine; an independent numpy
  implementation of the paper's baseline order (:func:`paper_baseline`: selection in the AP's
  native real latent, packing, whitening, the power-constrained precoder of eq. 19, SVD-MMSE per
  channel use, optionally the linear MMSE estimate of the whitened symbols (semalign's receiver)
  or a plain inverse of E_l = M_l H_l F, de-whitening, zero-filling, a least-squares Q_l of
  eq. 20 fitted on the received pilot estimates or on the AP's full native pilots); and the
  authors' ``BaseStationBaseline``/``AgentBaseline`` as they are and with one fix at a time
  and cumulatively (:data:`FIXES`, applied in this module around their objects, never by
  editing them), for all users together and for each user alone. The "output the user's
  mean" floor is the per-feature variance of the user's test latents.

    .venv/bin/python benchmarks/reference_check.py --reference PATH/TO/REFERENCE \\
        --latents cache/digits --ap efficientvit_m5 --users resnet18,rexnet_100 --json out.json

Needs torch and scipy (the reference's imports). Accuracy is not measured here (every user gets
a dummy classifier): only latent MSE, which needs no task model.

Longer than the usual 450 lines on purpose: the independent implementation must share no code
with semalign's baselines and the wrapper of the authors' classes belongs to no library module,
so the check is one self-contained script (``tests/test_reference_crosscheck.py`` imports it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from semalign.client.user import UserData
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.common.latents import load_encoder_splits
from semalign.common.representation import LINEAR
from semalign.common.threads import single_thread, single_torch_thread

from semalign.engine.scenario import Scenario, build_session
from semalign.engine.simulate import simulate_seed

#: the SNR the noiseless comparison gives semalign (its config takes finite SNRs only)
NOISELESS_DB = 100.0
#: the reference's baseline: learning rate and iterations of its power-constraint loop
#: (the values of its own configuration, .conf/hydra/baseline/train_baseline.yaml)
REF_LR, REF_LMB_ITERATIONS = 0.1, 30


# ----------------------------------------------------------------------------------- latents
@dataclass
class Latents:
    """Native real latents, rows are samples: the AP's and each user's train and test splits."""

    ap: str
    ap_train: np.ndarray
    ap_test: np.ndarray
    users: list[str]
    user_train: list[np.ndarray]
    user_test: list[np.ndarray]

    def subset(self, which: list[int]) -> Latents:
        pick = [self.users[i] for i in which]
        return replace(
            self,
            users=pick,
            user_train=[self.user_train[i] for i in which],
            user_test=[self.user_test[i] for i in which],
        )


def load_latents(directory: str | Path, ap: str, users: list[str]) -> Latents:
    """Train and test splits of the AP and the users from the latent cache."""
    splits = {enc: load_encoder_splits(directory, enc) for enc in [ap, *users]}
    return Latents(
        ap,
        splits[ap]["train"].latents,
        splits[ap]["test"].latents,
        list(users),
        [splits[u]["train"].latents for u in users],
        [splits[u]["test"].latents for u in users],
    )


def synthetic_latents(
    n_train: int = 600,
    n_test: int = 400,
    ap_dim: int = 32,
    user_dims: tuple[int, ...] = (24, 40),
    seed: int = 0,
) -> Latents:
    """Well-conditioned latents: the AP's are Gaussian with a spread spectrum (1 to 1/3) and a
    nonzero mean; each user's are a random linear map of them plus 10 % noise and an offset."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(1.0, 1 / 3, ap_dim)
    mean = rng.uniform(0.5, 1.5, ap_dim)
    ap = [mean + scale * rng.standard_normal((n, ap_dim)) for n in (n_train, n_test)]
    users, train, test = [], [], []
    for i, m in enumerate(user_dims):
        w = rng.standard_normal((ap_dim, m)) / math.sqrt(ap_dim)
        offset = rng.uniform(-1.0, 1.0, m)
        lat = [a @ w + offset + 0.1 * rng.standard_normal((len(a), m)) for a in ap]
        users.append(f"synthetic{i + 1}")
        train.append(lat[0].astype(np.float32))
        test.append(lat[1].astype(np.float32))
    return Latents(
        "synthetic-ap", ap[0].astype(np.float32), ap[1].astype(np.float32), users, train, test
    )


def conditioned(lat: Latents, max_condition: float = 1e4) -> Latents:
    """The same latents restricted to their well-conditioned part: each encoder's train and test
    rows projected (mean kept) onto the principal axes of its train covariance whose variance
    is at least 1/``max_condition`` of the largest (an even count). Both implementations get
    these, so a comparison on them is not decided by how each whitens a singular covariance."""

    def project(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lam, vec = np.linalg.eigh(np.cov(np.asarray(train, np.float64), rowvar=False))
        keep = vec[:, lam >= lam[-1] / max_condition][:, ::-1]
        keep = keep[:, : keep.shape[1] // 2 * 2]
        return (train @ keep).astype(np.float32), (test @ keep).astype(np.float32)

    ap = project(lat.ap_train, lat.ap_test)
    users = [project(a, b) for a, b in zip(lat.user_train, lat.user_test, strict=True)]
    return Latents(lat.ap, *ap, list(lat.users), [u[0] for u in users], [u[1] for u in users])


def mse(estimate: np.ndarray, native: np.ndarray) -> float:
    """Mean squared error per real feature (semalign's ``mse``)."""
    return float(np.mean((np.asarray(estimate, np.float64) - np.asarray(native, np.float64)) ** 2))


def mean_floor(native: np.ndarray) -> float:
    """MSE of outputting the mean: the per-feature variance of the user's test latents."""
    return float(np.mean(np.var(np.asarray(native, np.float64), axis=0)))


# ---------------------------------------------------------------------------------- semalign
def config(
    strategy: str, k: int, snr_db: float, seed: int, antennas: int, **extra
) -> AlignmentConfig:
    """The session configuration both sides are given (paper defaults: rho 1, P_T 1, T 30)."""
    return AlignmentConfig(
        strategy=strategy,
        antennas_tx=antennas,
        antennas_rx=antennas,
        channel_uses=k,
        snr_db=snr_db,
        seed=seed,
        **extra,
    )


def scenario(lat: Latents) -> Scenario:
    """semalign's scenario on these latents: every train row a pilot, no task model needed."""
    data = {}
    for name, train, test in zip(lat.users, lat.user_train, lat.user_test, strict=True):
        m = train.shape[1]
        dummy = LinearClassifier(
            np.zeros(m), np.ones(m), np.zeros((2, m)), np.zeros(2), np.arange(2)
        )
        labels = np.zeros(len(test), np.int64)
        data[(name, 1.0)] = UserData(np.arange(len(train)), train, test, labels, dummy)
    return Scenario(Path("."), lat.ap, list(lat.users), lat.ap_train, lat.ap_test, data)


def semalign_mse(lat: Latents, cfg: AlignmentConfig) -> list[float]:
    """Per-user test MSE of one in-process semalign session (the engine of ``simulate``)."""
    return [u.mse for u in simulate_seed(scenario(lat), cfg).users]


def channels(lat: Latents, cfg: AlignmentConfig) -> list[np.ndarray]:
    """The Hbar_l (N_R, N_T) semalign's users draw for ``cfg.seed`` (the same state machines)."""
    return [u.hbar for u in build_session(scenario(lat), cfg)[1]]


# ------------------------------------------------------------------- independent paper order
def select(
    x: np.ndarray, count: int, strategy: str, order: str = "magnitude"
) -> tuple[np.ndarray, np.ndarray]:
    """First-K: the first ``count`` real features of each row of x (n, d); Top-K: the ``count``
    largest-|.| ones, largest first (``order="magnitude"``, as the authors' ``torch.topk``) or
    by ascending position (``"index"``). Returns values and native indices, both (n, count)."""
    n, d = x.shape
    if count > d:
        raise ValueError(f"cannot send {count} of {d} features")
    if strategy == "first-k":
        idx = np.broadcast_to(np.arange(count), (n, count))
    else:
        idx = np.argpartition(-np.abs(x), count - 1, axis=1)[:, :count]
        if order == "index":
            idx = np.sort(idx, axis=1)
        else:
            rank = np.argsort(-np.abs(np.take_along_axis(x, idx, axis=1)), axis=1, kind="stable")
            idx = np.take_along_axis(idx, rank, axis=1)
    return np.take_along_axis(x, idx, axis=1).astype(np.float64), idx


def whitening(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean mu and Cholesky factor L of the covariance (1/n) of x (c, n), float64; eigenvalues
    floored at 1e-10 of the largest so that a singular selection still factors. Returns
    (mu (c, 1), L, the condition number of the unfloored covariance)."""
    mu = x.mean(axis=1, keepdims=True)
    cov = (x - mu) @ (x - mu).conj().T / x.shape[1]
    lam = np.linalg.eigvalsh(cov)
    floor = max(0.0, 1e-10 * lam[-1] - lam[0])
    cond = float(lam[-1] / lam[0]) if lam[0] > 0 else math.inf
    return mu, np.linalg.cholesky(cov + floor * np.eye(len(cov))), cond


def svd_mmse(hbar: np.ndarray, snr_db: float) -> np.ndarray:
    """M = (Sigma^H Sigma + I / SNR)^-1 (U Sigma)^H (N_T, N_R), Hbar = U Sigma V^H."""
    u, sv, _ = np.linalg.svd(hbar)
    sigma = np.zeros(hbar.shape)
    sigma[: len(sv), : len(sv)] = np.diag(sv)
    eye = np.eye(hbar.shape[1]) / 10 ** (snr_db / 10)
    return np.linalg.solve(sigma.T @ sigma + eye, (u @ sigma).conj().T)


def eq19_precoder(effective: list[np.ndarray], x: np.ndarray, power: float) -> np.ndarray:
    """argmin_F sum_l ||X - A_l F X||^2 s.t. tr(F F^H) <= P_T (eq. 19; the noise term does not
    depend on F), A_l = G_l H_l. KKT: A F B + mu F = (sum_l A_l^H) B with A = sum_l A_l^H A_l,
    B = X X^H, solved in the eigenbases of A and B; mu = 0 if feasible, else by bisection."""
    a = sum(m.conj().T @ m for m in effective)
    b = x @ x.conj().T
    ea, va = np.linalg.eigh(a)
    eb, vb = np.linalg.eigh(b)
    rhs = va.conj().T @ (sum(m.conj().T for m in effective) @ b) @ vb

    def solve(mu: float) -> np.ndarray:
        return va @ (rhs / (np.outer(ea, eb) + mu)) @ vb.conj().T

    def excess(mu: float) -> float:
        f = solve(mu)
        return float(np.real(np.vdot(f, f))) - power

    if ea[0] > 1e-12 * ea[-1] and excess(0.0) <= 0:
        return solve(0.0)
    lo, hi = 0.0, float(ea[-1] * eb[-1])
    while excess(hi) > 0:
        lo, hi = hi, hi * 10
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return solve(hi)


def least_squares(source: np.ndarray, target: np.ndarray, intercept: bool) -> np.ndarray:
    """Q (p [+1], m) minimizing ||[S 1] Q - T||_F (eq. 20; minimum norm when S is rank
    deficient, as a zero-filled First-K source is)."""
    design = np.hstack([source, np.ones((len(source), 1))]) if intercept else source
    return np.linalg.lstsq(design, np.asarray(target, np.float64), rcond=None)[0]


def apply_q(q: np.ndarray, source: np.ndarray) -> np.ndarray:
    return source @ q[:-1] + q[-1] if q.shape[0] == source.shape[1] + 1 else source @ q


def paper_baseline(
    lat: Latents,
    hbars: list[np.ndarray],
    cfg: AlignmentConfig,
    fits: tuple[tuple[str, bool], ...],
    rng: np.random.Generator,
    order: str = "magnitude",
    unmix: str = "none",
) -> tuple[dict[tuple[str, bool], list[float]], dict[str, float]]:
    """The paper's First-K/Top-K (``cfg.strategy``), plain numpy: per (fit, intercept) in
    ``fits`` each user's test MSE; and checks: ``selection_condition`` (of the selected pilots'
    covariance), ``mixing`` (the largest over users of ||offdiag(A_l F)|| / ||diag(A_l F)||:
    what one shared precoder leaves of the other symbols in each symbol a user receives),
    ``power_used`` (tr(F F^H) / P_T: 1 where the budget binds), ``gain`` (the largest over users
    of the mean |diag(A_l F)|: the amplitude at which a symbol reaches the user) and
    ``e_condition`` (the largest condition number of A_l F over users).
    ``unmix``: what the user does with the equalized symbols before de-whitening: ``none``
    (the paper's text: M_l alone), ``zf`` (inverts A_l F = M_l H_l F) or ``lmmse`` (the linear
    MMSE estimate of the whitened symbols, W = E^H (E E^H + sigma^2 M M^H)^-1 with E = A_l F:
    undoes the shrink of a binding power budget and the mixing of a shared precoder, bounded
    where E is ill-conditioned; semalign's receiver).

    AP: select 2 K N_T real features of its native latent, pack them into K N_T complex symbols
    (first half real part), whiten (mu and L fitted on the pilots), precode with eq. (19) for
    all users. User l: channel I_K (x) Hbar_l plus CN(0, sigma^2) with sigma^2 = (P_T/K)/SNR,
    SVD-MMSE per channel use (then ``unmix``), de-whiten (L z + mu), unpack, zero-fill into the
    native positions, then Q_l fitted on its received pilot estimates ("received") or on the
    AP's full native pilots ("full"), with or without an intercept.
    """
    k, nt, d = cfg.channel_uses, cfg.antennas_tx, lat.ap_train.shape[1]
    count = 2 * k * nt
    chosen = [select(x, count, cfg.strategy, order) for x in (lat.ap_train, lat.ap_test)]
    packed = [(v[:, : count // 2] + 1j * v[:, count // 2 :]).T for v, _ in chosen]
    mu, factor, cond = whitening(packed[0])
    white = [np.linalg.solve(factor, x - mu) for x in packed]
    eqs = [np.kron(np.eye(k), svd_mmse(h, cfg.snr_db)) for h in hbars]
    chans = [np.kron(np.eye(k), h) for h in hbars]
    effective = [g @ h for g, h in zip(eqs, chans, strict=True)]
    f = eq19_precoder(effective, white[0], cfg.power)
    ends = [m @ f for m in effective]
    info = {
        "selection_condition": cond,
        "mixing": max(_off_diagonal(e) for e in ends),
        "power_used": float(np.real(np.vdot(f, f))) / cfg.power,
        "gain": max(float(np.mean(np.abs(np.diag(e)))) for e in ends),
        "e_condition": max(float(np.linalg.cond(e)) for e in ends),
    }
    var = (cfg.power / k) / 10 ** (cfg.snr_db / 10)
    out: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for g, h, y_train, y_test in zip(eqs, chans, lat.user_train, lat.user_test, strict=True):
        filled = []
        for w, (_, idx) in zip(white, chosen, strict=True):
            shape = (h.shape[0], w.shape[1])
            noise = math.sqrt(var / 2) * (
                rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
            )
            z = g @ (h @ f @ w + noise)
            e = g @ h @ f
            if unmix == "zf":
                z = np.linalg.solve(e, z)
            elif unmix == "lmmse":
                z = e.conj().T @ np.linalg.solve(e @ e.conj().T + var * (g @ g.conj().T), z)
            z = factor @ z + mu
            full = np.zeros((w.shape[1], d))
            np.put_along_axis(full, idx, np.concatenate([z.real, z.imag]).T, axis=1)
            filled.append(full)
        for fit, intercept in fits:
            source = filled[0] if fit == "received" else np.asarray(lat.ap_train, np.float64)
            q = least_squares(source, y_train, intercept)
            out[(fit, intercept)].append(mse(apply_q(q, filled[1]), y_test))
    return dict(out), info


def _off_diagonal(m: np.ndarray) -> float:
    diag = np.diag(np.diag(m))
    return float(np.linalg.norm(m - diag) / np.linalg.norm(diag))


# --------------------------------------------------------------------------------- reference
class Reference:
    """The authors' modules, imported from a checkout (``src.linear_models``, ``src.utils``)."""

    def __init__(self, path: str | Path) -> None:
        import torch

        path = str(Path(path).resolve())
        if not (Path(path) / "src" / "linear_models.py").is_file():
            raise SystemExit(
                f"{path}: no src/linear_models.py (want a checkout of the authors' code)"
            )
        if path not in sys.path:
            sys.path.insert(0, path)
        from src import linear_models, utils  # the reference's own modules

        self.torch, self.models, self.utils = torch, linear_models, utils

    def eq7_agent(self) -> type:
        """Their ``Agent`` with the G-step of eq. (7): G = Y S^H (S S^H + n sigma^2 I)^-1, sigma^2
        the complex variance of the noise it adds (theirs: + n sigma (1 + 1j) on every entry)."""
        torch = self.torch

        class Eq7Agent(self.models.Agent):
            def _Agent__G_step(self, received, channel_awareness: bool) -> None:
                if not channel_awareness:
                    received = self.channel_matrix @ received
                gram = received @ received.H
                eye = torch.eye(len(gram), dtype=gram.dtype)
                reg = self.n_pilots * self.sigma**2 * eye
                self.G = self.pilots @ received.H @ torch.linalg.inv(gram + reg)

        return Eq7Agent

    def real(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def complex(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.complex64))


FED_VARIANTS = ("as is", "Z + G refresh", "+ G-step n s2 I", "+ paper noise")


def reference_fed(ref: Reference, lat: Latents, hbars, cfg: AlignmentConfig, noiseless: bool):
    """Per-user test MSE of the authors' federated ADMM ("shared" BaseStation, channel-aware),
    started from semalign's F^(0) for ``cfg.seed``, under :data:`FED_VARIANTS`: as is (F
    transmitted with the last round's G); "Z + G refresh" (semalign's end of session: the
    feasible Z transmitted, each G refreshed for it); the same with the G-step of eq. (7)
    (+ n sigma^2 I with their noise variance) instead of theirs (+ n sigma (1 + 1j) on every
    entry); and with that and the paper's noise variance (P_T/K)/SNR instead of 1/(N_R SNR K^2)
    (in the G-step and on the channel). Without noise the last two are the third."""
    out = _reference_fed_run(ref, lat, hbars, cfg, noiseless, None)
    if noiseless:
        return {**out, FED_VARIANTS[2]: out[FED_VARIANTS[1]], FED_VARIANTS[3]: out[FED_VARIANTS[1]]}
    out[FED_VARIANTS[2]] = _reference_fed_run(ref, lat, hbars, cfg, False, "theirs")[
        FED_VARIANTS[1]
    ]
    out[FED_VARIANTS[3]] = _reference_fed_run(ref, lat, hbars, cfg, False, "paper")[FED_VARIANTS[1]]
    return out


def _reference_fed_run(ref: Reference, lat: Latents, hbars, cfg, noiseless: bool, noise):
    """One session of the authors' fed; ``noise``: None (their Agent), "theirs" or "paper" (their
    Agent with the G-step of eq. (7), at their noise variance or at the paper's)."""
    torch, k, d = ref.torch, cfg.channel_uses, lat.ap_train.shape[1]
    torch.manual_seed(cfg.seed)
    bs = ref.models.BaseStation(
        model=lat.ap,
        dim=d,
        antennas_transmitter=cfg.antennas_tx,
        channel_usage=k,
        rho=cfg.rho,
        px_cost=cfg.power,
        status="shared",
    )
    f0 = LINEAR.init_pre_equalizer(
        k * cfg.antennas_tx, (d + 1) // 2, np.random.default_rng(cfg.seed)
    )
    bs.F = ref.complex(f0)
    bs.Z, bs.U = torch.zeros_like(bs.F), torch.zeros_like(bs.F)
    agents = []
    for i, (name, y, h) in enumerate(zip(lat.users, lat.user_train, hbars, strict=True)):
        agent = (ref.models.Agent if noise is None else ref.eq7_agent())(
            id=i,
            pilots=ref.real(y),
            model_name=name,
            antennas_receiver=cfg.antennas_rx,
            channel_matrix=ref.complex(h),
            channel_usage=k,
            snr=0 if noiseless else cfg.snr_db,  # 0: the reference's own "no noise" switch
            privacy=True,
        )
        if noise == "paper":
            agent.sigma = math.sqrt(cfg.power / k / 10 ** (cfg.snr_db / 10))
        bs.handshake_step(idx=i, pilots=ref.real(lat.ap_train), channel_matrix=ref.complex(h))
        agents.append(agent)
    for _ in range(cfg.iterations):
        sent = bs.group_cast()
        for i, agent in enumerate(agents):
            bs.received_from_agent(msg=agent.step(sent[i], channel_awareness=True))
        bs.step()
    out = {FED_VARIANTS[0]: _fed_test(ref, bs, agents, lat)}
    bs.F = bs.Z.clone()  # semalign's end of session: transmit Z, users refresh G for it
    sent = bs.group_cast()
    for i, agent in enumerate(agents):
        agent.step(sent[i], channel_awareness=True)
    out[FED_VARIANTS[1]] = _fed_test(ref, bs, agents, lat)
    return out


def _fed_test(ref: Reference, bs, agents, lat: Latents) -> list[float]:
    x = ref.real(lat.ap_test).T
    return [
        mse(agent.decode(bs.transmit_to_agent(i, x), channel_awareness=True).numpy(), y)
        for i, (agent, y) in enumerate(zip(agents, lat.user_test, strict=True))
    ]


@dataclass(frozen=True)
class Fix:
    """A change to the authors' baseline receiver or transmitter (all off: their pipeline).

    dewhiten: "none" (theirs: whitened symbols go straight into native positions), "factor"
        (L z: re-colour only), "full" (L z + mu). fit: "full" (theirs: Q on the AP's clean full
        native pilots) or "received" (Q on the user's received, zero-filled pilot estimates).
    intercept: an affine Q. precoder: "reference" (theirs: the mean over users of (G_l H_l)^-1,
        normalized) or "eq19" (the power-constrained least squares of eq. 19 for all users).
    noise: "reference" (theirs: complex variance 1/(N_R SNR K^2)) or "paper" ((P_T/K)/SNR).
    """

    name: str
    dewhiten: str = "none"
    fit: str = "full"
    intercept: bool = False
    precoder: str = "reference"
    noise: str = "reference"


CUMULATIVE = Fix("+ L z + mu, Q received, intercept", "full", "received", True)
FIXES = (
    Fix("wrapper, no fix"),
    Fix("re-colour L z only (no mean)", dewhiten="factor"),
    Fix("de-whiten L z + mu", dewhiten="full"),
    Fix("Q fitted on received", fit="received"),
    Fix("Q with intercept", intercept=True),
    Fix("Q received + intercept", fit="received", intercept=True),
    Fix("eq. 19 precoder", precoder="eq19"),
    Fix("paper noise scale", noise="paper"),
    Fix("+ L z + mu, Q received", "full", "received"),
    CUMULATIVE,
    replace(CUMULATIVE, name="+ ..., eq. 19 precoder", precoder="eq19"),
    replace(CUMULATIVE, name="+ ..., eq. 19, paper noise", precoder="eq19", noise="paper"),
    Fix("L z + mu, Q full + intercept", "full", "full", True),
)
AS_IS = "as is (their decode)"


def reference_baselines(ref: Reference, lat: Latents, hbars, cfg: AlignmentConfig):
    """Per-user test MSE of the authors' First-K/Top-K (``cfg.strategy``) as they are
    (:data:`AS_IS`) and under every fix of :data:`FIXES` (same noise draws for all), plus
    checks: how far the wrapper without fixes is from their decode, and the error of their
    Cholesky factor of the selected pilots' covariance (``cholesky_ex`` is not checked)."""
    torch, k, nt = ref.torch, cfg.channel_uses, cfg.antennas_tx
    torch.manual_seed(cfg.seed)
    bs = ref.models.BaseStationBaseline(
        model=lat.ap,
        dim=lat.ap_train.shape[1],
        antennas_transmitter=nt,
        channel_usage=k,
        px_cost=cfg.power,
        lr=REF_LR,
        strategy={"first-k": "First-K", "top-k": "Top-K"}[cfg.strategy],
        iterations=REF_LMB_ITERATIONS,
    )
    agents = []
    for i, (name, y, h) in enumerate(zip(lat.users, lat.user_train, hbars, strict=True)):
        agent = ref.models.AgentBaseline(
            id=i,
            pilots=ref.real(y),
            bs_pilots=ref.real(lat.ap_train),
            model_name=name,
            antennas_receiver=cfg.antennas_rx,
            channel_matrix=ref.complex(h),
            channel_usage=k,
            snr=cfg.snr_db,
        )
        msg = agent.step(channel_awareness=True)
        bs.handshake_step(
            idx=i, pilots=ref.real(lat.ap_train), received=msg, channel_matrix=ref.complex(h)
        )
        agents.append(agent)
    bs.step()
    theirs = (bs.F.clone(), bs.normalizer)
    gain = math.sqrt(k * nt)  # their equalizer is scaled by ||V||_F = sqrt(K N_T)
    effective = [(a.G / gain @ a.channel_matrix).numpy().astype(np.complex128) for a in agents]
    x = bs.agents_pilots[0]["pilots"].numpy().astype(np.complex128)
    ours = (ref.complex(eq19_precoder(effective, x, cfg.power)), 1 / gain)
    out: dict[str, list[float]] = {AS_IS: []}
    for i, (agent, y) in enumerate(zip(agents, lat.user_test, strict=True)):
        torch.manual_seed(_noise_seed(cfg, i, test=True))
        msg = bs.transmit_to_agent(i, ref.real(lat.ap_test).T)
        out[AS_IS].append(mse(agent.decode(msg, channel_awareness=True).numpy(), y))
    for fix in FIXES:
        bs.F, bs.normalizer = ours if fix.precoder == "eq19" else theirs
        out[fix.name] = [
            _fixed_mse(ref, bs, agents[i], i, lat, fix, cfg) for i in range(len(agents))
        ]
    bs.F, bs.normalizer = theirs
    white = bs.agents_pilots[0]["pilots"]
    coloured = bs.L[0] @ white + bs.mean[0]  # their selected, packed pilots before whitening
    cov = torch.cov(coloured).to(torch.complex128)
    factor = bs.L[0].to(torch.complex128)
    design = np.hstack([np.asarray(lat.ap_train, np.float64), np.ones((len(lat.ap_train), 1))])
    checks = {
        "their_q_norm": max(float(torch.linalg.norm(a.A)) for a in agents),
        "full_fit_condition": float(np.linalg.cond(design)),
        "wrapper_vs_decode": max(
            abs(a - b) for a, b in zip(out[AS_IS], out[FIXES[0].name], strict=True)
        ),
        "cholesky_error": float(
            torch.linalg.norm(factor @ factor.H - cov) / torch.linalg.norm(cov)
        ),
    }
    return out, checks


def _noise_seed(cfg: AlignmentConfig, user: int, *, test: bool) -> int:
    return cfg.seed * 1000 + 2 * user + int(test)


def _fixed_mse(ref: Reference, bs, agent, idx: int, lat: Latents, fix: Fix, cfg) -> float:
    test = _estimate(ref, bs, agent, idx, lat.ap_test, fix, cfg, _noise_seed(cfg, idx, test=True))
    y_train, y_test = lat.user_train[idx], lat.user_test[idx]
    if fix.fit == "full" and not fix.intercept:
        return mse(test @ agent.A.double().numpy().T, y_test)  # their Q
    if fix.fit == "full":
        source = np.asarray(lat.ap_train, np.float64)
    else:
        source = _estimate(
            ref, bs, agent, idx, lat.ap_train, fix, cfg, _noise_seed(cfg, idx, test=False)
        )
    return mse(apply_q(least_squares(source, y_train, fix.intercept), test), y_test)


def _estimate(ref: Reference, bs, agent, idx: int, x, fix: Fix, cfg, noise_seed: int) -> np.ndarray:
    """Their transmit, channel, noise and equalizer for native AP latents x (n, d), then
    ``fix.dewhiten`` and their zero-filling: (n, d) before the alignment Q."""
    torch = ref.torch
    msg = bs.transmit_to_agent(idx, ref.real(x).T)
    received = msg["pilots"]
    if agent.snr:
        sigma = agent.sigma
        if fix.noise == "paper":
            sigma = math.sqrt(cfg.power / cfg.channel_uses / 10 ** (cfg.snr_db / 10))
        torch.manual_seed(noise_seed)
        received = received + ref.utils.awgn(sigma=sigma, size=received.shape)
    z = (agent.G * msg["normalizer"]) @ received
    if fix.dewhiten != "none":
        z = bs.L[idx] @ z + (bs.mean[idx] if fix.dewhiten == "full" else 0)
    values = ref.utils.decompress_complex_tensor(z)
    filled = torch.zeros(msg["size"], msg["n"])
    if msg["strategy"] == "First-K":
        filled[: msg["sent_features"]] = values
    else:
        filled[msg["indexes"], torch.arange(msg["n"])] = values
    return filled.T.double().numpy()


# ---------------------------------------------------------------------------------- the runs
PAPER_FITS = (("received", True), ("received", False), ("full", True), ("full", False))
STRATEGIES = ("first-k", "top-k")


def fed_records(ref: Reference, lat: Latents, seed: int, k: int, args, **keys) -> list[dict]:
    """Fed per user: semalign and the reference at --snr-db, 40 dB and without noise."""
    rows = []
    for snr in dict.fromkeys((args.snr_db, 40.0, None)):
        cfg = config("fed", k, NOISELESS_DB if snr is None else snr, seed, args.antennas)
        hbars = channels(lat, cfg)
        found = {"floor": [mean_floor(y) for y in lat.user_test]}
        found["semalign"] = semalign_mse(lat, cfg)
        found.update(
            {f"ref {n}": v for n, v in reference_fed(ref, lat, hbars, cfg, snr is None).items()}
        )
        label = "noiseless" if snr is None else f"{snr:g} dB"
        for row, values in found.items():
            rows += _rows(values, lat, block="fed", seed=seed, k=k, snr=label, row=row, **keys)
    return rows


def whitening_checks(ref: Reference, lat: Latents) -> dict[str, dict[str, float]]:
    """Per encoder, what the reference's ``prewhiten`` meets: the smallest eigenvalue (relative
    to the largest) of the packed pilots' covariance and ``cholesky_ex``'s info (0: factored;
    otherwise the order of the first non-positive pivot, which the reference does not check)."""
    torch, out = ref.torch, {}
    for name, x in [(lat.ap, lat.ap_train), *zip(lat.users, lat.user_train, strict=True)]:
        cov = torch.cov(ref.utils.complex_compressed_tensor(ref.real(x).T))
        lam = np.linalg.eigvalsh(cov.numpy().astype(np.complex128))
        info = int(torch.linalg.cholesky_ex(cov)[1])
        out[name] = {"min_eig_rel": float(lam[0] / lam[-1]), "cholesky_info": info}
    return out


def baseline_records(ref: Reference, lat: Latents, seed: int, k: int, args) -> list[dict]:
    """First-K/Top-K per user: the floor, semalign, the paper order, the reference and fixes."""
    rows: list[dict] = []
    for strategy in STRATEGIES:
        cfg = config(strategy, k, args.snr_db, seed, args.antennas)
        hbars = channels(lat, cfg)
        found = {"floor: output the user's mean": [mean_floor(y) for y in lat.user_test]}
        for fit in ("received", "full"):  # semalign's Q is always affine
            found[f"semalign (M_l, LMMSE), Q {fit} + intercept"] = semalign_mse(
                lat, cfg.model_copy(update={"baseline_fit": fit})
            )
        rng = np.random.default_rng((seed, k, 23))
        paper, info = paper_baseline(lat, hbars, cfg, PAPER_FITS, rng)
        for (fit, intercept), values in paper.items():
            found[f"paper order (M_l only), Q {fit}{' + intercept' if intercept else ''}"] = values
        for unmix, label in (("zf", "M_l, E_l^-1"), ("lmmse", "M_l, LMMSE")):
            unmixed, _ = paper_baseline(lat, hbars, cfg, PAPER_FITS[:1], rng, unmix=unmix)
            found[f"paper order ({label}), Q received + intercept"] = unmixed[PAPER_FITS[0]]
        if strategy == "top-k":  # the same with the selected values packed by position
            by_index, _ = paper_baseline(lat, hbars, cfg, PAPER_FITS[:1], rng, order="index")
            found["paper order (M_l only), Top-K packed by index"] = by_index[PAPER_FITS[0]]
        theirs, checks = reference_baselines(ref, lat, hbars, cfg)
        found.update({f"ref {n}": v for n, v in theirs.items()})
        checks.update(info)
        common = dict(block="baseline", seed=seed, k=k, strategy=strategy, group=len(lat.users))
        for row, values in found.items():
            rows += _rows(values, lat, row=row, **common)
        rows.append(dict(common, row="checks", **checks))
    return rows


def _rows(values: list[float], lat: Latents, **keys) -> list[dict]:
    return [dict(keys, user=u, mse=v) for u, v in zip(lat.users, values, strict=True)]


def run(ref: Reference, lat: Latents, args) -> list[dict]:
    """Every record. Fed: all users together and each user alone on the latents as they are,
    and all users together on their well-conditioned part (:func:`conditioned`). Baselines: all
    users together and each one alone."""
    groups = [list(range(len(lat.users)))]
    if len(lat.users) > 1:
        groups += [[i] for i in range(len(lat.users))]
    fed_sets = [("native", lat, groups), ("well-conditioned", conditioned(lat), groups[:1])]
    records = []
    with single_thread(), single_torch_thread():  # small matrices: threads only cost here
        for seed in args.seeds:
            for k in args.channel_uses:
                start = time.perf_counter()
                for name, data, sets in fed_sets:
                    for group in sets:
                        users = "together" if len(group) == len(lat.users) else "alone"
                        sub = data.subset(group)
                        records += fed_records(ref, sub, seed, k, args, latents=name, users=users)
                for group in groups:
                    records += baseline_records(ref, lat.subset(group), seed, k, args)
                print(f"# seed {seed}, K={k}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return records


# -------------------------------------------------------------------------------- the tables
FED_KEY = ("latents", "users", "k", "snr", "user")


def fed_table(records: list[dict]) -> list[dict]:
    """Per (latents, users, K, SNR, user): the mean over seeds of each row's MSE and the largest
    relative difference of the reference's to semalign's over seeds."""
    fed = [r for r in records if r["block"] == "fed"]
    out = []
    for cell_key in dict.fromkeys(tuple(r[key] for key in FED_KEY) for r in fed):
        cell = [r for r in fed if tuple(r[key] for key in FED_KEY) == cell_key]
        by_row = defaultdict(dict)
        for r in cell:
            by_row[r["row"]][r["seed"]] = r["mse"]
        entry = dict(zip(FED_KEY, cell_key, strict=True))
        entry.update({row: float(np.mean(list(v.values()))) for row, v in by_row.items()})
        ours = by_row["semalign"]
        for row in (f"ref {v}" for v in FED_VARIANTS):
            diffs = [abs(by_row[row][seed] / ours[seed] - 1) for seed in ours]
            entry[f"{row}: max rel diff"] = max(diffs)
        out.append(entry)
    return out


def baseline_table(
    records: list[dict], full_group: int, single: bool
) -> dict[str, dict[str, dict[str, float]]]:
    """Row -> column ("first-k K=1", ...) -> mean and median test MSE over users and seeds, for
    all users together or (``single``) each user alone."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["block"] == "baseline" and r["row"] != "checks" and (r["group"] == 1) == single:
            if single or r["group"] == full_group:
                cells[r["row"]][f"{r['strategy']} K={r['k']}"].append(r["mse"])
    return {
        row: {
            col: {"mean": float(np.mean(v)), "median": float(np.median(v))}
            for col, v in cols.items()
        }
        for row, cols in cells.items()
    }


CHECKS = (
    "selection_condition",
    "mixing",
    "power_used",
    "gain",
    "e_condition",
    "cholesky_error",
    "full_fit_condition",
    "their_q_norm",
    "wrapper_vs_decode",
)


def checks_table(records: list[dict], full_group: int) -> dict[str, dict[str, list[float]]]:
    """Column ("first-k K=1, together", ...) -> the smallest and the largest value over seeds
    (and, alone, over users) of each check."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for r in records:
        if r["row"] == "checks":
            users = "together" if r["group"] == full_group else "alone"
            col = out[f"{r['strategy']} K={r['k']}, {users}"]
            for key in CHECKS:
                lo, hi = col.get(key, [math.inf, -math.inf])
                col[key] = [min(lo, float(r[key])), max(hi, float(r[key]))]
    return dict(out)


def print_report(summary: dict) -> None:
    print(f"# {summary['command']}")
    print(f"# load average {summary['loadavg']}, {summary['seconds']:.0f} s")
    print("\nfed: test MSE per feature of each user, mean over seeds; floor: outputting the user's")
    print("mean; the reference as is, with semalign's end of session (Z+G), + the G-step of eq. 7")
    print("(eq.7), + the paper's noise variance (+noise); rel: max |ref / semalign - 1| over seeds")
    names = ("as is", "Z+G", "eq.7", "+noise")
    head = (("latents", 16), ("users", 8), ("user", 22), ("K", 2), ("SNR", 9), ("floor", 7))
    line = " ".join(f"{n:>{w}}" for n, w in (*head, ("semalign", 8)))
    print(line + "".join(f" {n:>8} {'rel':>7}" for n in names))
    for e in summary["fed"]:
        line = (
            f"{e['latents']:>16} {e['users']:>8} {e['user'][:22]:>22} {e['k']:>2} {e['snr']:>9} "
            f"{e['floor']:>7.4f} {e['semalign']:>8.4f}"
        )
        for v in FED_VARIANTS:
            line += f" {e[f'ref {v}']:>8.4f} {e[f'ref {v}: max rel diff']:>7.1e}"
        print(line)
    print("\nthe reference's whitening of each encoder's packed pilots (cholesky_ex info, 0 = ok;")
    print("smallest covariance eigenvalue relative to the largest)")
    for name, checks in summary["whitening"].items():
        line = ", ".join(
            f"{enc} {v['cholesky_info']} ({v['min_eig_rel']:.1e})" for enc, v in checks.items()
        )
        print(f"  {name}: {line}")
    print(RECEIVERS)
    for title, table in summary["baselines"].items():
        cols = sorted({c for row in table.values() for c in row})
        print(
            f"\nFirst-K / Top-K, {title}: test MSE per feature, mean / median over users and seeds"
        )
        print(f"{'':{LABEL}}" + "".join(f"{c:>18}" for c in cols))
        for row, values in table.items():
            cells = [values.get(c, {"mean": math.nan, "median": math.nan}) for c in cols]
            print(f"{row[:LABEL]:{LABEL}}" + "".join(_cell(c["mean"], c["median"]) for c in cells))
    print(CHECKS_LEGEND)
    for col, values in summary["checks"].items():
        print(f"  {col}: " + ", ".join(f"{k} {_range(*v)}" for k, v in values.items()))


#: the legend of the checks
CHECKS_LEGEND = """
checks, smallest..largest over seeds (and users, alone): selection_condition (covariance of the
selected, packed pilots); paper order, eq. 19 precoder F: mixing (largest over users of
||offdiag(E_l)|| / ||diag(E_l)||, E_l = A_l F = M_l H_l F), power_used (tr(F F^H) / P_T),
gain (largest over users of the mean |diag(E_l)|), e_condition (largest cond(E_l));
cholesky_error (of the reference's factor of the selected pilots' covariance);
full_fit_condition ([X 1] of the AP's native pilots); their_q_norm (||Q||_F of their full fit);
wrapper_vs_decode (test MSE: this module's unfixed pipeline against their decode)"""


def _range(lo: float, hi: float) -> str:
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}..{hi:.3g}"


#: width of the row labels of the baseline tables
LABEL = 50
#: the legend of the baseline tables' row labels
RECEIVERS = """
First-K / Top-K receivers, after the user's channel: "M_l only" = the paper's text, the SVD-MMSE
equalizer M_l alone; "M_l, LMMSE" = then the linear MMSE estimate of the whitened symbols,
W = E^H (E E^H + s2 M M^H)^-1 with E_l = M_l H_l F (semalign's default receiver); "M_l, E_l^-1"
= then a plain inverse of E_l. All three de-whiten (L z + mu), unpack and zero-fill before Q.
"ref" = the authors' receiver (their equalizer times F's power normalizer, no de-whitening, Q
fitted on the AP's full native pilots) unless a fix says otherwise. The Top-K packed-by-index
row fits Q on the received pilots, with intercept."""


def _cell(mean: float, median: float) -> str:
    text = "-" if math.isnan(mean) else f"{mean:.4g} / {median:.4g}"
    return f"{text:>18}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of the authors' code")
    p.add_argument("--latents", default="cache/digits", help="latent cache directory")
    p.add_argument("--ap", default="efficientvit_m5", help="the AP's encoder")
    p.add_argument("--users", default="resnet18,rexnet_100", help="users' encoders, comma list")
    p.add_argument("--channel-uses", type=ints, default=[1, 2], help="K values, comma list")
    p.add_argument("--seeds", type=ints, default=[27, 42, 100], help="seeds, comma list")
    p.add_argument("--snr-db", type=float, default=20.0, help="SNR per receive antenna, dB")
    p.add_argument("--antennas", type=int, default=4, help="N_T = N_R")
    p.add_argument("--json", help="write the records and tables here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ref = Reference(args.reference)
    users = [u for u in args.users.split(",") if u]
    lat = load_latents(args.latents, args.ap, users)
    start = time.perf_counter()
    records = run(ref, lat, args)
    summary = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "seconds": time.perf_counter() - start,
        "fed": fed_table(records),
        "baselines": {
            f"all {len(users)} users together": baseline_table(records, len(users), False),
            "each user alone": baseline_table(records, len(users), True),
        },
        "checks": checks_table(records, len(users)),
        "whitening": {
            "native": whitening_checks(ref, lat),
            "well-conditioned": whitening_checks(ref, conditioned(lat)),
        },
    }
    if len(users) == 1:
        summary["baselines"].pop("each user alone")
    print_report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
