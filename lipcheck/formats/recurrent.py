"""Recurrent layers' weights (LSTM, GRU, RNN) as layers: each stacked matrix and each gate's slice.

A recurrent cell applies its input-to-hidden matrix W and hidden-to-hidden matrix R once per
time step; each stacks one block of rows per gate. lipcheck reports the stacked matrix (what
the file stores, the bound of all gates' pre-activations together) and, as separate layers
named ``<name>[<gate>]``, each gate's block, so every gate's σ is visible. Gate orders differ:
ONNX stacks LSTM as i,o,f,c and GRU as z,r,h; torch stacks LSTM as i,f,g,o and GRU as r,z,n.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from lipcheck.model import Layer

ONNX_GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("h",), "DynamicQuantizeLSTM": ("i", "o", "f", "c")}
TORCH_GATES = {4: ("LSTM", ("i", "f", "g", "o")), 3: ("GRU", ("r", "z", "n")), 1: ("RNN", ("h",))}
# torch's nn.LSTM/GRU/RNN parameter names: weight_ih_l0, weight_hh_l1_reverse, weight_hr_l0 (projection).
TORCH_NAME = re.compile(r"^(?P<base>.*?)weight_(?P<kind>ih|hh|hr)_l(?P<layer>\d+)(?P<reverse>_reverse)?$")


def layers(
    name: str, cell: str, gates: tuple[str, ...], shape: tuple[int, ...], dtype: str, load: Callable[[], torch.Tensor], note: str, **where: object
) -> list[Layer]:
    """The stacked (gates·H, in) matrix as a layer, then one layer per gate's (H, in) block."""
    out = [Layer(name, "matmul", shape, dtype, load, note=f"{note}; {cell} gates {','.join(gates)} stacked", **where)]  # type: ignore[arg-type]
    rows = shape[0] // len(gates) if len(gates) > 1 and shape[0] % len(gates) == 0 else 0
    for k, gate in enumerate(gates if rows else ()):

        def part(f: Callable[[], torch.Tensor] = load, k: int = k) -> torch.Tensor:
            return f()[k * rows : (k + 1) * rows]

        out.append(
            Layer(
                f"{name}[{gate}]",
                "matmul",
                (rows, *shape[1:]),
                dtype,
                part,
                note=f"{cell} gate {gate}: rows {k * rows}..{(k + 1) * rows - 1} of {name}",
                **where,  # type: ignore[arg-type]
            )
        )
    return out


def torch_cell(name: str, shape: tuple[int, ...], names: dict[str, tuple[int, ...]]) -> tuple[str, tuple[str, ...]] | None:
    """The cell kind and torch gate order of a ``weight_ih/hh_l<k>`` tensor, from the stacked row count."""
    m = TORCH_NAME.match(name)
    if m is None or len(shape) != 2:
        return None
    if m["kind"] == "hr":
        return "LSTM projection", ("p",)
    hh = names.get(f"{m['base']}weight_hh_l{m['layer']}{m['reverse'] or ''}")
    hr = names.get(f"{m['base']}weight_hr_l{m['layer']}{m['reverse'] or ''}")
    hidden = hr[1] if hr is not None else (hh[1] if hh is not None else None)
    if not hidden or shape[0] % hidden:
        return None
    return TORCH_GATES.get(shape[0] // hidden)
