"""How real latents meet the complex channel: strictly linear (the paper) or widely linear.

Two representations of the same physical system, chosen per session (``equalizer``):

* ``linear`` (paper section II): real latents (d, n) are packed into complex features
  (ceil(d/2), n) (:mod:`semalign.common.packing`), whitened to E[x x^H] = I, and F and G are
  complex matrices: strictly linear maps of the packed features.
* ``widely-linear``: F and G act on [x; conj(x)], which is the same as acting on the real
  vector [Re x; Im x]: any real-linear map. The ADMM then runs on the *real-composite* system:
  features are the d real latents whitened to E[x x^T] = I/2 (so that ||x||^2 is what the
  packing gives), a block of K N complex symbols s is carried as the 2 K N reals
  [Re s; Im s], the block channel H (K N_R, K N_T) becomes [[Re H, -Im H], [Im H, Re H]]
  (2 K N_R, 2 K N_T), and each real noise component has variance sigma^2 / 2.

The ADMM functions of :mod:`semalign.common.admm` are written with conjugate transposes; on
real-valued inputs (held as complex128 with a zero imaginary part) they solve the real problem
unchanged: every solve there has a unique solution, so it is real up to rounding. A strictly
linear pair (F, G) embedded in the real-composite form gives the same transmit power, the same
squared error and the same noise term, so the widely-linear optimum is at least as good on the
pilots. Units stay those of the paper: the power budget P_T bounds E||s||^2 = tr(F F^T) / 2
(tr(F F^H) for the complex form), the SNR per receive antenna is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
from semalign.common.admm import apply_block_channel, init_pre_equalizer
from semalign.common.config import Equalizer
from semalign.common.packing import ShapeError, complex_dim, complex_to_real, real_to_complex
from semalign.common.whitening import Whitener, fit_whitener
from semalign.common.wire import WireFormat

EQUALIZERS: tuple[str, ...] = get_args(Equalizer)


@dataclass(frozen=True)
class Representation:
    """The features, symbols and channel the ADMM sees (see the module docstring).

    Attributes:
        widely_linear: the real-composite system (``False``: the paper's complex packing).
    """

    widely_linear: bool = False

    @classmethod
    def of(cls, equalizer: Equalizer | str) -> Representation:
        """The representation of an ``equalizer`` name (``linear`` or ``widely-linear``)."""
        if equalizer not in EQUALIZERS:
            raise ShapeError(f"unknown equalizer {equalizer!r} (known: {', '.join(EQUALIZERS)})")
        return cls(widely_linear=equalizer == "widely-linear")

    # ------------------------------------------------------------------ features
    @property
    def whitened_variance(self) -> float:
        """Variance of each whitened feature: 1 (complex), 1/2 (each real component)."""
        return 0.5 if self.widely_linear else 1.0

    def wire_dtype(self, *, double: bool = False) -> str:
        """dtype of the matrices that carry features, symbols or statistics on the wire:
        complex64 (complex128 when ``double``), or float32 (float64) when widely linear (the
        native :meth:`wire_format`'s)."""
        wire = self.wire_format()
        return wire.double_dtype if double else wire.dtype

    @property
    def wire_codes(self) -> tuple[int, ...]:
        """The proto dtype codes a receiver accepts for those matrices at native precision (the
        native :meth:`wire_format`'s)."""
        return self.wire_format().codes

    def wire_format(self, precision: str = "native") -> WireFormat:
        """How this representation's features, symbols, F and uploads travel at wire
        ``precision`` (``native``, ``float16`` or ``bfloat16``): real matrices when widely
        linear, complex ones otherwise (:class:`~semalign.common.wire.WireFormat`)."""
        return WireFormat(real=self.widely_linear, precision=precision)

    def feature_dim(self, real_dim: int) -> int:
        """Rows c of the features of a latent of ``real_dim`` reals: d or ceil(d/2)."""
        return real_dim if self.widely_linear else complex_dim(real_dim)

    def features(self, latents: np.ndarray) -> np.ndarray:
        """Real latents (n, d) -> features (c, n), complex128 (zero imaginary part when widely
        linear)."""
        x = np.asarray(latents, dtype=np.float64).T
        if self.widely_linear:
            return x.astype(np.complex128)
        return real_to_complex(x)

    def latents(self, features: np.ndarray, real_dim: int) -> np.ndarray:
        """Inverse of :meth:`features`: features (c, n) -> real latents (n, d)."""
        if self.widely_linear:
            z = np.asarray(features)
            if z.ndim != 2 or z.shape[0] != real_dim:
                raise ShapeError(f"expected ({real_dim}, n) features, got shape {z.shape}")
            return np.real(z).T
        return complex_to_real(features, real_dim).T

    def fit_whitener(self, features: np.ndarray) -> Whitener:
        """A whitener fitted on features (c, n) to :attr:`whitened_variance`."""
        return fit_whitener(features, variance=self.whitened_variance)

    def to_wire(self, array: np.ndarray) -> np.ndarray:
        """The array as it travels: its real part when widely linear (the imaginary part is
        zero up to rounding), the array itself otherwise (:meth:`WireFormat.to_wire`)."""
        return self.wire_format().to_wire(array)

    # ------------------------------------------------------------------ symbols and channel
    def symbol_rows(self, symbols: int) -> int:
        """Rows of a block of ``symbols`` complex symbols (K N): K N or 2 K N reals."""
        return 2 * symbols if self.widely_linear else symbols

    def to_symbols(self, rows: np.ndarray) -> np.ndarray:
        """Rows (symbol_rows(K N), n) -> the complex symbols (K N, n) that go on the air."""
        if not self.widely_linear:
            return rows
        if rows.ndim != 2 or rows.shape[0] % 2:
            raise ShapeError(f"expected (2 K N, n) real-composite symbols, got {rows.shape}")
        return real_to_complex(np.real(rows))

    def from_symbols(self, symbols: np.ndarray) -> np.ndarray:
        """Complex symbols (K N, n) -> rows (symbol_rows(K N), n), complex128."""
        if not self.widely_linear:
            return symbols
        return np.vstack([symbols.real, symbols.imag]).astype(np.complex128)

    def apply_block_channel(self, hbar: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """H rows for H = I_K (x) Hbar (N_R, N_T), noiseless: rows (symbol_rows(K N_T), cols)
        -> (symbol_rows(K N_R), cols) (:func:`semalign.common.admm.apply_block_channel`)."""
        if not self.widely_linear:
            return apply_block_channel(hbar, rows)
        return self.from_symbols(apply_block_channel(hbar, self.to_symbols(rows)))

    def channel_matrix(self, h: np.ndarray) -> np.ndarray:
        """The block channel H (K N_R, K N_T) in this representation: H itself, or
        [[Re H, -Im H], [Im H, Re H]] (2 K N_R, 2 K N_T) as complex128."""
        if not self.widely_linear:
            return h
        return np.block([[h.real, -h.imag], [h.imag, h.real]]).astype(np.complex128)

    def noise_var(self, sigma2: float) -> float:
        """Noise variance per row of the received block: sigma^2, or sigma^2 / 2 per real."""
        return sigma2 / 2 if self.widely_linear else sigma2

    def power_budget(self, power: float) -> float:
        """Bound on tr(F F^H) of the ADMM's F for a transmit power P_T: P_T, or 2 P_T (the
        real-composite F sees features of variance 1/2)."""
        return 2 * power if self.widely_linear else power

    def init_pre_equalizer(self, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
        """F^(0) (rows, cols): CN(0, 1) entries, or N(0, 1/2) real ones (the real-composite
        form of a CN(0, 1) matrix has entries of variance 1/2)."""
        if self.widely_linear:
            return (np.sqrt(0.5) * rng.standard_normal((rows, cols))).astype(np.complex128)
        return init_pre_equalizer(rows, cols, rng)


#: the paper's representation
LINEAR = Representation(False)
