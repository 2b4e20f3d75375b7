"""The conv lower end's start vector: the circular symbol's top mode at its worst frequency, windowed to the input."""

from __future__ import annotations

import math

import torch

from lipcheck.spectral.conv_fourier import CircularBound, TapOffsets


def symbol_at(weight: torch.Tensor, groups: int, group: int, taps: TapOffsets, frequency: tuple[int, ...]) -> torch.Tensor:
    """K(w) = sum_t e^{i w.q_t} W_t E_{r_t} of one group at one frequency: (C_out/g, C_in/g * s^D)."""
    w = weight.to(torch.float64)
    m, c_in = w.shape[0] // groups, w.shape[1]
    per_tap = w[group * m : (group + 1) * m].reshape(m, c_in, -1)
    k = torch.zeros(m, c_in, taps.phases, dtype=torch.complex128)
    for t, (shift, r) in enumerate(zip(taps.shifts, taps.residues)):
        angle = 2 * math.pi * sum((f * q % mm) / mm for f, q, mm in zip(frequency, shift, taps.reduced))
        k[:, :, r] += complex(math.cos(angle), math.sin(angle)) * per_tap[:, :, t]
    return k.reshape(m, c_in * taps.phases)


def windowed_mode(weight: torch.Tensor, groups: int, found: CircularBound, spatial: tuple[int, ...], stride: tuple[int, ...], begin: list[int]) -> torch.Tensor:
    """The circular operator's top input mode on the real input, under a sine window per axis.

    With v the top right singular vector of K(w) at the top frequency, the ring input
    z[s*m + r] = Re(v[c * phases + r] e^{i w.m}) is the circular conv's top input; the input pixel
    i sits at ring position i + b. The zero-padded operator's top input is close to it away from
    the borders; the window sin(pi (i+1)/(n+1)) tapers it to zero there.
    """
    taps = found.taps
    c_in = weight.shape[1]
    if found.side == "in":
        v = found.vector
    else:
        v = symbol_at(weight, groups, found.group, taps, found.frequency).mH @ found.vector
    v = v / v.norm().clamp_min(1e-300)
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.int64) + b for n, b in zip(spatial, begin)), indexing="ij")
    residue = torch.zeros_like(grids[0])
    angle = torch.zeros(grids[0].shape, dtype=torch.float64)
    window = torch.ones(grids[0].shape, dtype=torch.float64)
    for axis, (g, s, m, n) in enumerate(zip(grids, stride, taps.reduced, spatial)):
        residue = residue * s + g % s
        angle += (found.frequency[axis] * (g // s) % m).to(torch.float64) / m
        pos = torch.arange(n, dtype=torch.float64).reshape([-1 if a == axis else 1 for a in range(len(spatial))])
        window = window * torch.sin(math.pi * (pos + 1) / (n + 1))
    wave = torch.polar(torch.ones_like(angle), 2 * math.pi * angle)
    x = torch.zeros(1, c_in * groups, *spatial, dtype=torch.float64)
    for c in range(c_in):
        x[0, found.group * c_in + c] = (v[c * taps.phases + residue] * wave).real * window
    return x
