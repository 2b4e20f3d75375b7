"""LipSDP-Neuron for runs of zero-padded convs too large for explicit operators: per-channel
multipliers, one matrix inequality per frequency of a circular embedding, certified in float64.

The run is F(x) = C_l φ_l(C_{l-1} ⋯ φ_1(C_0 x)) on samples of fixed size, every C_k a conv with
zero padding, only C_0 strided, every φ_k slope-restricted in [a_k, b_k]. Biases do not change
the constant.

Embedding. Per axis, put the input at [0, n) of a ring and let tap t of C_k read offset
t·d − b (b the conv's front padding): output o reads o·s + t·d − b. On a ring of N ≥ n + b cells
that also holds the last read (lipcheck.spectral.conv_fourier.ring_sizes), every read outside
[0, n) lands outside [0, n), so with the entries outside [0, n) zero the circular conv gives the
zero-padded one at the outputs [0, n_out). The strided first conv acts on the polyphase stack
x_r[m] = x[s·m + r] as a stride-1 circular conv on N/s cells; all the others are stride-1
already, and one reduced ring of M cells per axis large enough for every conv holds the whole run.
Between convs, ψ_k is φ_k at the zero-padded map's positions [0, n_k) and 0 elsewhere on the
ring, so that the next conv reads zeros there as its padding: the zero-padded run is the
circular run x ↦ C_l ψ_l(⋯ψ_1(C_0 x)) on inputs held in [0, n), read at its outputs [0, n_out),
and has at most its constant. ψ_k is slope-restricted in [min(a_k, 0), b_k] at every position
(0 has slope 0): the slope ranges are widened to contain 0.

Per frequency. LipSDP-Neuron's certificate with one multiplier per channel (the same at every
position) is a matrix N(ρ, T) whose blocks are circular convs and T ⊗ I: the DFT on the ring
takes it to one block-tridiagonal Hermitian matrix N(ω) per frequency, built as in
lipcheck.graph.lipsdp from the conv symbols K_k(ω) = Σ_t W_t E_{r_t} e^{iω·q_t} (tap t reads
residue r_t, shifted by q_t cells of the reduced ring). N ⪰ 0 if and only if every N(ω) ⪰ 0, and
N(−ω) is the conjugate of N(ω), so half the frequencies suffice. ρ*(T) is the largest over the
frequencies of the dense ρ*; the optimizer works on the frequencies where it is largest and
widens that set when another frequency overtakes them.

Identity skip. For x + C_1 φ(C_0 x) (two stride-1 convs whose output has the input's shape), the
identity on the ring adds the input at the output's own positions, and ‖Δ + K_1 u‖² = ‖Δ‖² +
2 Re Δᴴ K_1 u + ‖K_1 u‖² changes N(ω) by −1 on the first block and −K_1ᴴ on the off-diagonal one
(lipcheck.graph.lipsdp.certify_batch); ρ* is then 1 plus the top eigenvalue of Mᴴ Y⁻¹ M with
M = (a + b) T K_0 + K_1ᴴ and Y = 2T − K_1ᴴ K_1 (and −2ab K_0ᴴ T K_0 added). A conv skip S x
(a downsampling block's 1x1 conv, with the first conv's stride, so on the same polyphase stack)
takes SᴴS from the first block and −K_1ᴴS to the off-diagonal one instead: ρ* is the top
eigenvalue of SᴴS + Mᴴ Y⁻¹ M with M = (a + b) T K_0 + K_1ᴴ S.

Certificate. The dense certificate (lipcheck.graph.lipsdp.certify_batch) checks N(ω) ⪰ 0 in
complex arithmetic on the symbols themselves, its rounding terms counting each complex dot product
of k terms as two real ones of 2k terms and the complex factorization as conv_fourier's does. The
symbols are computed, not exact: each entry of fl(K_k) is
within √2 (μ + γ_{T+1}(1 + μ)) Σ_t |W_t| of K_k (μ = 128u, the error of a phase table's cos and
sin, as in lipcheck.spectral.conv_fourier), so ‖fl(K_k) − K_k‖ ≤ ε_k, the Frobenius norm of that bound.
Changing K_k by E_k changes N by at most |2a b| ‖T_{k+1}‖ (2‖K_k‖ ε_k + ε_k²) on a diagonal block
(2‖K_l‖ ε_l + ε_l² on the last) and (a + b) ‖T_{k+1}‖ ε_k on an off-diagonal one; the certificate
takes the largest diagonal change plus twice the largest off-diagonal one off every diagonal
entry (‖K_k‖ at most the largest Frobenius norm of fl(K_k) plus ε_k).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch

from lipcheck.graph import lipsdp
from lipcheck.model import ConvGeometry
from lipcheck.spectral import conv_fourier

# Frequencies the optimizer works on at once; where ρ* is largest.
_ACTIVE = 16
# Float64 values of symbol entries (two per complex entry) per batch of the certificate.
_CERTIFY_ENTRIES = 1 << 23
# Top eigenvalues per frequency: Lanczos estimates everywhere, exact values at this many of the
# largest (the certificate decides in the end; these only choose ρ and the multipliers).
_EXACT_TOP = 4
_ESTIMATE_STEPS = 16
_ESTIMATE_FROM = 128  # matrix order from which the estimates are cheaper than eigvalsh


@dataclass(frozen=True)
class ConvLink:
    """One conv of a run: its weight (C_out, C_in/groups, *k) in float64, resolved zero-padding
    geometry (explicit pads) and input spatial size."""

    weight: torch.Tensor
    geometry: ConvGeometry
    spatial: tuple[int, ...]
    scale: tuple[float, ...] | None = None  # per output channel (a batch norm after the conv), applied by ``scaled``

    def scaled(self) -> tuple[torch.Tensor, float]:
        """The weight with ``scale`` applied to its output channels, in float64, and a bound on each
        entry's relative rounding error."""
        w = self.weight.to(torch.float64)
        if self.scale is None:
            return w, 0.0
        factor = torch.tensor(self.scale, dtype=torch.float64).reshape(-1, *([1] * (w.dim() - 1)))
        # The factor is scale / sqrt(var + eps): three roundings, and one more for the product.
        return w * factor, 4 * conv_fourier._gamma(1)

    def output_size(self) -> tuple[int, ...]:
        """The zero-padded conv's output spatial size."""
        d = len(self.spatial)
        begin, end = self.geometry.padding[:d], self.geometry.padding[d:]
        sizes = []
        for n, k, s, dil, b, e in zip(self.spatial, self.weight.shape[2:], self.geometry.stride, self.geometry.dilation, begin, end):
            span = (k - 1) * dil + 1
            sizes.append((n + b + e - span) // s + 1)
        return tuple(sizes)


def reduced_ring(links: list[ConvLink]) -> list[int] | str:
    """The reduced ring (cells per axis) that holds every conv of the run, or why there is none."""
    d = len(links[0].spatial)
    ring = [1] * d
    for index, link in enumerate(links):
        geometry = link.geometry
        if geometry.padding_mode != "zeros" or len(geometry.padding) != 2 * d or link.weight.dim() != d + 2:
            return "a conv that does not pad with zeros"
        if index > 0 and any(s != 1 for s in geometry.stride):
            return "a strided conv after the first"
        if index > 0 and link.spatial != links[index - 1].output_size():
            return "a conv that does not read the previous conv's output"
        if any(n <= 0 for n in link.output_size()):
            return "a conv with no output"
        sizes = conv_fourier.ring_sizes(
            link.spatial, tuple(link.weight.shape[2:]), geometry.stride, geometry.dilation, list(geometry.padding[:d]), list(geometry.padding[d:])
        )
        ring = [max(r, size // s) for r, size, s in zip(ring, sizes, geometry.stride)]
    return ring


def _taps(link: ConvLink) -> tuple[list[tuple[int, ...]], list[int]]:
    """Each tap's shift q_t on the reduced ring and its residue r_t (row-major over the axes)."""
    d = len(link.spatial)
    begin = link.geometry.padding[:d]
    shifts, residues = [], []
    for tap in itertools.product(*(range(k) for k in link.weight.shape[2:])):
        r, shift = 0, []
        for t, dil, b, s in zip(tap, link.geometry.dilation, begin, link.geometry.stride):
            q, rest = divmod(t * dil - b, s)
            shift.append(q)
            r = r * s + rest
        shifts.append(tuple(shift))
        residues.append(r)
    return shifts, residues


def half_frequencies(ring: list[int]) -> torch.Tensor:
    """Integer frequencies, one of each pair {j, −j}."""
    return conv_fourier._half_frequencies(ring)


def symbols(links: list[ConvLink], ring: list[int], freqs: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """fl(K_k(ω)) at the given frequencies, (F, C_out, C_in · phases) complex128 per conv, with a
    spectral-norm bound ε_k on fl(K_k(ω)) − K_k(ω) valid at every frequency (module doc)."""
    out: list[torch.Tensor] = []
    errors: list[float] = []
    mu = conv_fourier._PHASE_ERROR * conv_fourier.UNIT_ROUNDOFF
    for link in links:
        w, relative = link.scaled()
        c_out, per_group = w.shape[0], w.shape[1]
        groups = link.geometry.groups
        phases = math.prod(link.geometry.stride)
        shifts, residues = _taps(link)
        count = len(shifts)
        # Placed taps: (T, C_out, C_in * phases), input column c * phases + r.
        placed = torch.zeros(count, c_out, per_group * groups * phases, dtype=torch.float64)
        flat = w.reshape(c_out, per_group, count)
        m = c_out // groups
        for g in range(groups):
            rows = slice(g * m, (g + 1) * m)
            for t in range(count):
                cols = (g * per_group + torch.arange(per_group)) * phases + residues[t]
                placed[t, rows, cols] = flat[rows, :, t]
        angle = torch.zeros(freqs.shape[0], count, dtype=torch.float64)
        q = torch.tensor(shifts, dtype=torch.int64).reshape(count, -1)
        for axis, size in enumerate(ring):
            angle += torch.remainder(freqs[:, axis : axis + 1] * q[:, axis], size).to(torch.float64) / size
        angle *= 2 * math.pi
        table = placed.reshape(count, -1)
        real = (torch.cos(angle) @ table).reshape(-1, c_out, placed.shape[2])
        imag = (torch.sin(angle) @ table).reshape(-1, c_out, placed.shape[2])
        out.append(torch.complex(real, imag))
        gamma = conv_fourier._gamma(count + 1)
        abs_sum = placed.abs().sum(dim=0)
        fro = float(abs_sum.square().sum().sqrt()) * (1 + conv_fourier._gamma(abs_sum.numel() + count))
        # fl(K) against the symbol of the exact weights; a folded scale moves each tap by ≤ relative·|W_t|.
        errors.append((math.sqrt(2) * (mu + gamma * (1 + mu)) + 2 * relative) * fro * (1 + 1e-12))
    return out, errors


@dataclass(frozen=True)
class Skip:
    """What a two-conv run is added to: its input (``symbol`` None, the identity) or a conv of its
    input, as fl(S(ω)) per frequency with a spectral-norm bound on its rounding."""

    symbol: torch.Tensor | None = None
    error: float = 0.0

    def restrict(self, index: torch.Tensor) -> Skip:
        return self if self.symbol is None else Skip(self.symbol[index], self.error)


class FrequencyObjective:
    """ρ*(T) of lipcheck.graph.lipsdp, the largest over a set of frequencies, as a differentiable
    function of log T (per channel)."""

    def __init__(self, ws: list[torch.Tensor], slopes: list[tuple[float, float]], skip: Skip | None = None) -> None:
        self.ws = ws
        self.slopes = slopes
        # S x + K_1 φ(K_0 x): ρ* is the top eigenvalue of SᴴS + MᴴY⁻¹M (lipcheck.graph.lipsdp.certify_batch)
        self.skip = skip
        self.chain = SimpleNamespace(scale=1.0)  # what lipsdp.optimize reads for its progress
        self.start_rho = math.inf
        last = ws[-1]
        self.g_last = last.mH @ last
        first = ws[0]
        # K_0 = V Pᴴ with Pᴴ P = I: K_0ᴴ R K_0 has the nonzero eigenvalues of Vᴴ R V.
        if skip is not None or first.shape[-1] <= first.shape[-2]:
            self.k0 = first
        else:
            evals, evecs = torch.linalg.eigh(first @ first.mH)
            self.k0 = evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2).to(evecs.dtype)

    def restrict(self, index: torch.Tensor) -> FrequencyObjective:
        """The same objective on the frequencies ``index`` only."""
        part = FrequencyObjective.__new__(FrequencyObjective)
        part.ws = [w[index] for w in self.ws]
        part.slopes = self.slopes
        part.skip = None if self.skip is None else self.skip.restrict(index)
        part.chain = self.chain
        part.start_rho = math.inf
        part.g_last = self.g_last[index]
        part.k0 = self.k0[index]
        return part

    def reduced(self, thetas: list[torch.Tensor]) -> torch.Tensor | None:
        """K_0ᴴ R_1 K_0 per frequency, or None where some Y_k is not positive definite."""
        g = self.g_last
        for k in range(len(thetas) - 1, -1, -1):
            t = thetas[k].exp()
            y = torch.diag_embed(((2.0 - lipsdp._RESERVE) * t).to(g.dtype)).expand_as(g) - g
            factor, info = torch.linalg.cholesky_ex(y)
            if bool((info != 0).any()):
                return None
            g = self._eliminated(k, t, factor)
        return g

    def _eliminated(self, k: int, t: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
        """G_{k-1} from hidden layer k's multipliers ``t`` and the Cholesky factor of its Y_k (with the
        skip's terms at the first layer)."""
        a, b = self.slopes[k]
        below = self.ws[k] if k > 0 else self.k0
        scaled = (t.to(below.dtype)[:, None] if isinstance(t, torch.Tensor) else t) * below
        if self.skip is not None:
            s_sym = self.skip.symbol
            joined = self.ws[1].mH if s_sym is None else self.ws[1].mH @ s_sym
            v = torch.linalg.solve_triangular(factor, (a + b) * scaled + joined, upper=False)
            g = v.mH @ v
            if s_sym is not None:
                g = g + s_sym.mH @ s_sym
        else:
            v = torch.linalg.solve_triangular(factor, scaled, upper=False)
            g = (a + b) ** 2 * (v.mH @ v)
        if a * b != 0.0:
            g = g - 2.0 * a * b * (below.mH @ scaled)
        return 0.5 * (g + g.mH)

    @property
    def offset(self) -> float:
        """What ρ* adds to the top eigenvalue: 1 for the identity skip, else 0."""
        return 1.0 if self.skip is not None and self.skip.symbol is None else 0.0

    def per_frequency(self, thetas: list[torch.Tensor]) -> torch.Tensor | None:
        """The largest eigenvalue of K_0ᴴ R_1 K_0 at each frequency (ρ*(T) less ``offset``, kept apart
        so that a skip block's small excess over 1 is not lost to rounding), or None where infeasible;
        exact where it is largest, an estimate from below elsewhere (``top_eigenvalues``)."""
        with torch.no_grad():
            g = self.reduced(thetas)
            if g is None or not bool(torch.isfinite(torch.view_as_real(g)).all()):
                return None
            return top_eigenvalues(g)

    def eigenvalues(self, thetas: list[torch.Tensor]) -> torch.Tensor | None:
        """Every frequency's eigenvalues, sorted (the optimizer's soft maximum reads them all)."""
        g = self.reduced(thetas)
        return None if g is None else torch.sort(torch.linalg.eigvalsh(g).reshape(-1)).values

    def rho(self, thetas: list[torch.Tensor]) -> float:
        """ρ*(T) − offset over these frequencies (what the optimizer minimizes), or inf where the
        multipliers are infeasible."""
        top = self.per_frequency(thetas)
        if top is None:
            return math.inf
        value = float(top.max())
        return value if math.isfinite(value) else math.inf

    def initial(self) -> list[torch.Tensor]:
        """log T of the per-layer closed form T_k = t_k I, t_k from the largest eigenvalue of G_k over
        the frequencies (lipcheck.graph.lipsdp)."""
        thetas: list[torch.Tensor] = [torch.zeros(0)] * (len(self.ws) - 1)
        g = self.g_last
        for k in range(len(self.ws) - 2, -1, -1):
            a, b = self.slopes[k]
            found = _closed_form(g, top_eigenvalues(g), a, b)
            if found is None:  # the largest estimate was not the largest eigenvalue: take them all exactly
                found = _closed_form(g, torch.linalg.eigvalsh(g)[:, -1], a, b)
            if found is None:
                raise ArithmeticError("no closed-form multiplier keeps the blocks positive definite")
            t, factor = found
            thetas[k] = torch.full((g.shape[-1],), math.log(t), dtype=torch.float64)
            g = self._eliminated(k, t, factor)
        finite = bool(torch.isfinite(torch.view_as_real(g)).all())
        self.start_rho = float(top_eigenvalues(g).max()) if finite else math.inf
        return thetas


def _closed_form(g: torch.Tensor, tops: torch.Tensor, a: float, b: float) -> tuple[float, torch.Tensor] | None:
    """The multiplier t = λ b/(b−a) of G's largest eigenvalue λ over the frequencies (from ``tops``),
    raised a little where (2 − reserve) t I − G does not factor, with that factor; None where it
    still does not."""
    scale = float(torch.diagonal(g, dim1=-2, dim2=-1).real.abs().max())
    top = max(float(tops.max()), 1e-12 * scale + 1e-300)
    t = top * b / (b - a) * (1.0 + 1e-9)
    for _ in range(20):
        y = torch.diag_embed(torch.full((g.shape[-1],), (2.0 - lipsdp._RESERVE) * t, dtype=torch.float64).to(g.dtype)).expand_as(g) - g
        factor, info = torch.linalg.cholesky_ex(y)
        if not bool((info != 0).any()):
            return t, factor
        t *= 1.0 + 1e-6
    return None


def top_eigenvalues(g: torch.Tensor) -> torch.Tensor:
    """The largest eigenvalue of each Hermitian matrix of the batch: exact (eigvalsh) for the
    _EXACT_TOP whose Lanczos estimates are largest, the estimate (a Ritz value, so from below up to
    rounding) for the others.

    A full eigendecomposition costs several Cholesky factorizations per frequency; only the largest
    values steer the multipliers and ρ, and a value chosen too small only makes the certificate
    try a larger ρ.
    """
    if g.shape[0] <= 2 * _EXACT_TOP or g.shape[-1] < _ESTIMATE_FROM:
        return torch.linalg.eigvalsh(g)[:, -1]
    estimates, _ = conv_fourier.hermitian_top(g, rel=1e-6, max_steps=_ESTIMATE_STEPS)
    picks = torch.topk(estimates, _EXACT_TOP).indices
    values = estimates.to(torch.float64).clone()
    values[picks] = torch.linalg.eigvalsh(g[picks])[:, -1]
    return values


def _norm(w: torch.Tensor, error: float) -> float:
    """A bound on the spectral norm of the exact matrices behind fl(w) at every frequency."""
    # The norm sums 2 m squares (a complex entry's two parts), then takes a root: γ_{2m+4} covers both.
    entries = w.shape[-2] * w.shape[-1]
    return float(torch.linalg.matrix_norm(w, ord="fro").max()) * (1 + conv_fourier._gamma(2 * entries + 4)) + error


def symbol_shift(
    ws: list[torch.Tensor], errors: list[float], slopes: list[tuple[float, float]], multipliers: list[torch.Tensor], skip: Skip | None = None
) -> float:
    """A bound on how far N(ω) built from the computed symbols is from N(ω) of the exact ones (module
    doc; a skip's −K_1ᴴS moves the off-diagonal block by at most ε_1‖S‖ + ‖K_1‖ε_S + ε_1ε_S, its SᴴS
    the first block by 2‖S‖ε_S + ε_S²)."""
    norms = [_norm(w, e) for w, e in zip(ws, errors)]
    diagonal, off = 0.0, 0.0
    joined = 0.0
    if skip is not None and skip.symbol is None:
        joined = errors[-1]
    elif skip is not None and skip.symbol is not None:
        s_norm, e_s = _norm(skip.symbol, skip.error), skip.error
        joined = errors[-1] * s_norm + norms[-1] * e_s + errors[-1] * e_s
        diagonal = 2.0 * s_norm * e_s + e_s * e_s
    for k, (a, b) in enumerate(slopes):
        t = float(multipliers[k].max())
        e = errors[k]
        diagonal = max(diagonal, abs(2.0 * a * b) * t * (2.0 * norms[k] * e + e * e) + (diagonal if k == 0 else 0.0))
        off = max(off, abs(a + b) * t * e + (joined if k == 0 else 0.0))
    e = errors[-1]
    diagonal = max(diagonal, 2.0 * norms[-1] * e + e * e)
    return (diagonal + 2.0 * off) * (1 + 1e-9)


def certify_frequencies(
    ws: list[torch.Tensor], errors: list[float], slopes: list[tuple[float, float]], multipliers: list[torch.Tensor], rho: float, skip: Skip | None = None
) -> bool:
    """Whether N(ρ, T) ⪰ 0 for the exact symbols at every frequency (module doc), checked in float64;
    with the identity skip, ``rho`` is ρ − 1 (lipcheck.graph.lipsdp.certify_batch)."""
    shift = symbol_shift(ws, errors, slopes, multipliers, skip)
    per_frequency = sum(2 * w.shape[-2] * w.shape[-1] for w in ws)  # complex entries, in float64s
    step = max(1, _CERTIFY_ENTRIES // max(1, per_frequency))
    for start in range(0, ws[0].shape[0], step):
        chunk = [w[start : start + step] for w in ws]
        s_chunk = None if skip is None or skip.symbol is None else skip.symbol[start : start + step]
        if not lipsdp.certify_batch(chunk, slopes, multipliers, rho, shift, skip is not None, s_chunk):
            return False
    return True


@dataclass(frozen=True)
class RunResult:
    """A certified bound of a conv run, with what it took."""

    bound: float
    start_bound: float
    frequencies: int
    iterations: int
    seconds: float


def masked_slopes(slopes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Slope ranges widened to contain 0 (the masked positions of the ring)."""
    return [(min(a, 0.0), max(b, 0.0)) for a, b in slopes]


def cost(links: list[ConvLink], skip: ConvLink | None = None) -> tuple[int, float]:
    """The symbols' complex entries and the certificate's float operations for this run (and its skip conv)."""
    ring = reduced_ring(links)
    if isinstance(ring, str):
        return 0, 0.0
    if skip is not None:
        alone = reduced_ring([skip])
        if isinstance(alone, str):
            return 0, 0.0
        ring = [max(x, y) for x, y in zip(ring, alone)]
        links = links + [skip]
    frequencies = half_frequencies(ring).shape[0]
    entries = frequencies * sum(link.weight.shape[0] * link.weight.shape[1] * link.geometry.groups * math.prod(link.geometry.stride) for link in links)
    chain = links if skip is None else links[:-1]
    width = 2 * (chain[0].weight.shape[1] * chain[0].geometry.groups * math.prod(chain[0].geometry.stride) + sum(link.weight.shape[0] for link in chain[:-1]))
    return entries, frequencies * width**3 / 3.0


def identity_skip(links: list[ConvLink]) -> bool:
    """Whether x + (the run)(x) is defined on the ring: two stride-1 convs, the output the input's shape."""
    if len(links) != 2 or any(s != 1 for link in links for s in link.geometry.stride):
        return False
    first, last = links
    return last.output_size() == first.spatial and last.weight.shape[0] == first.weight.shape[1] * first.geometry.groups


def conv_skip(links: list[ConvLink], skip: ConvLink) -> bool:
    """Whether S x + (the run)(x) is defined on the ring for the conv S: two convs, S reading the
    run's input with the first conv's stride and writing the run's output shape."""
    if len(links) != 2:
        return False
    first, last = links
    return (
        skip.spatial == first.spatial
        and skip.geometry.stride == first.geometry.stride
        and skip.weight.shape[1] * skip.geometry.groups == first.weight.shape[1] * first.geometry.groups
        and skip.weight.shape[0] == last.weight.shape[0]
        and skip.output_size() == last.output_size()
    )


def certified_run_bound(
    links: list[ConvLink], slopes: list[tuple[float, float]], max_iter: int, budget_s: float, skip: bool = False, skip_conv: ConvLink | None = None
) -> RunResult | None:
    """A certified LipSDP-Neuron bound of the zero-padded conv run (with ``skip``, of x + run(x): two
    stride-1 convs, the identity on the ring adding the input at the output's positions; with
    ``skip_conv`` S, of S x + run(x)), or None where the multipliers cannot be certified; at most
    ``max_iter`` optimizer steps per round (0: the closed form)."""
    started = time.perf_counter()
    ring = reduced_ring(links)
    if isinstance(ring, str):
        raise ValueError(ring)
    if skip_conv is not None:
        alone = reduced_ring([skip_conv])
        if isinstance(alone, str) or not conv_skip(links, skip_conv):
            raise ValueError("the skip conv does not fit the run")
        ring = [max(x, y) for x, y in zip(ring, alone)]
    if skip and skip_conv is None and not identity_skip(links):
        raise ValueError("the run's output is not shaped as its input")
    slopes = [lipsdp.outward(a, b) for a, b in masked_slopes(slopes)]
    freqs = half_frequencies(ring)
    ws, errors = symbols([replace(link, weight=link.weight.to(torch.float64)) for link in links], ring, freqs)
    joined: Skip | None = None
    if skip_conv is not None:
        (s_sym,), (s_err,) = symbols([replace(skip_conv, weight=skip_conv.weight.to(torch.float64))], ring, freqs)
        joined = Skip(s_sym, s_err)
    elif skip:
        joined = Skip()
    objective = FrequencyObjective(ws, slopes, joined)
    thetas = objective.initial()
    start, start_rho = thetas, objective.start_rho
    if not math.isfinite(start_rho):
        return None
    iterations = 0
    rho = start_rho
    if max_iter > 0:
        active = torch.topk(objective.per_frequency(thetas), min(_ACTIVE, freqs.shape[0])).indices  # type: ignore[arg-type]
        for _ in range(8):
            left = budget_s - (time.perf_counter() - started)
            if left <= 0:
                break
            part = objective.restrict(active)
            found, _, steps = lipsdp.optimize(part, thetas, left, max_iter=max_iter)
            iterations += steps
            top = objective.per_frequency(found)
            if top is None:
                break
            if float(top.max()) < rho:
                thetas, rho = found, float(top.max())
            outside = torch.ones(freqs.shape[0], dtype=torch.bool)
            outside[active] = False
            if not bool(outside.any()) or float(top[outside].max()) <= float(top[active].max()):
                break
            extra = torch.topk(torch.where(outside, top, torch.full_like(top, -math.inf)), min(_ACTIVE, int(outside.sum()))).indices
            active = torch.cat([active, extra])
    tried = [(thetas, rho)] if rho == start_rho else [(thetas, rho), (start, start_rho)]
    for multipliers_log, excess in tried:
        bound = _certified(ws, errors, slopes, [t.exp() for t in multipliers_log], excess, joined, objective.offset)
        if bound is not None:
            return RunResult(bound, math.sqrt(start_rho + objective.offset), freqs.shape[0], iterations, time.perf_counter() - started)
    return None


def _certified(
    ws: list[torch.Tensor],
    errors: list[float],
    slopes: list[tuple[float, float]],
    multipliers: list[torch.Tensor],
    excess: float,
    skip: Skip | None,
    offset: float,
) -> float | None:
    """sqrt(offset + the smallest certified ρ − offset at or above ``excess``, with doubling
    margins), or None where no margin passes."""
    margin = 2.0**-40
    floor = 2.0**-40 * max(offset, abs(excess))
    for _ in range(lipsdp._MAX_MARGIN_STEPS):
        trial = max(excess * (1.0 + margin), excess + margin * floor, floor)
        if certify_frequencies(ws, errors, slopes, multipliers, trial, skip):
            # ρ = trial + 1 with the identity skip: its float sum rounds by at most a factor 1 + u.
            return math.sqrt((trial + offset) * (1.0 + 2.0**-50)) * (1.0 + 2.0**-50)
        margin *= 8.0
        floor *= 8.0
    return None
