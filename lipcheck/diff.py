"""Drift between two checkpoints of the same model: per-layer sigma and bound changes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lipcheck.report.data import Report


@dataclass(frozen=True)
class LayerChange:
    """One layer in both files (or only in one: the other side is None)."""

    name: str
    old_sigma: float | None
    new_sigma: float | None
    old_upper: float | None
    new_upper: float | None
    in_old: bool = True
    in_new: bool = True

    @property
    def growth(self) -> float | None:
        """Relative change of the Lipschitz upper end, in percent (None when not comparable)."""
        return _growth(self.old_upper, self.new_upper)


@dataclass(frozen=True)
class Drift:
    """Every layer's change and the product bound's, with the --fail-if-grows verdict."""

    old: Report
    new: Report
    layers: list[LayerChange]
    fail_if_grows: float | None

    @property
    def product_growth(self) -> float | None:
        """Relative change of the product bound, in percent (from its log10 where it is beyond float range)."""
        found = _growth(self.old.bound.product, self.new.bound.product)
        before, after = self.old.bound.product_log10, self.new.bound.product_log10
        if found is not None or before is None or after is None or before == -math.inf:
            return found
        change = after - before
        return math.inf if change > 300 else (10.0**change - 1.0) * 100.0

    @property
    def warnings(self) -> list[str]:
        """What the user should know before trusting the comparison: layers that match nothing."""
        added = [c.name for c in self.layers if not c.in_old]
        removed = [c.name for c in self.layers if not c.in_new]
        out = []
        if self.layers and len(added) + len(removed) == len(self.layers):
            out.append("no layer names match between the two files: are they checkpoints of the same model?")
        else:
            if added:
                out.append(f"{len(added)} layer(s) only in the new file: {', '.join(added[:5])}" + (" ..." if len(added) > 5 else ""))
            if removed:
                out.append(f"{len(removed)} layer(s) only in the old file: {', '.join(removed[:5])}" + (" ..." if len(removed) > 5 else ""))
        shapes_old = {layer.display_name: tuple(layer.shape) for layer in self.old.layers}
        reshaped = [
            f"{layer.display_name} ({'x'.join(map(str, shapes_old[layer.display_name]))} -> {'x'.join(map(str, layer.shape))})"
            for layer in self.new.layers
            if layer.display_name in shapes_old and shapes_old[layer.display_name] != tuple(layer.shape)
        ]
        if reshaped:
            out.append(
                f"{len(reshaped)} layer(s) changed shape, so their numbers compare different maps: {', '.join(reshaped[:5])}"
                + (" ..." if len(reshaped) > 5 else "")
            )
        return out

    @property
    def failures(self) -> list[str]:
        """What grew by more than --fail-if-grows percent; exact values in the messages."""
        if self.fail_if_grows is None:
            return []
        limit = self.fail_if_grows
        out = [
            f"layer {c.name}: upper bound {c.old_upper!r} -> {c.new_upper!r} (+{c.growth!r}%) grew more than {limit!r}%"
            for c in self.layers
            if c.growth is not None and c.growth > limit
        ]
        growth = self.product_growth
        if growth is not None and growth > limit:
            out.append(f"product bound {self.old.bound.product!r} -> {self.new.bound.product!r} (+{growth!r}%) grew more than {limit!r}%")
        return out


def _growth(old: float | None, new: float | None) -> float | None:
    if old is None or new is None or old < 0.0:
        return None
    if old == 0.0:  # from zero to anything positive is unbounded growth
        return math.inf if new > 0.0 else None
    return (new - old) / old * 100.0


def compare(old: Report, new: Report, fail_if_grows: float | None = None) -> Drift:
    """Match layers by name (with scope) and compare them."""
    before = {layer.display_name: layer for layer in old.layers}
    after = {layer.display_name: layer for layer in new.layers}
    names = [layer.display_name for layer in new.layers] + [n for n in before if n not in after]
    changes = []
    for name in names:
        a, b = before.get(name), after.get(name)
        changes.append(
            LayerChange(
                name,
                a.sigma if a else None,
                b.sigma if b else None,
                a.lipschitz.upper if a and a.lipschitz else None,
                b.lipschitz.upper if b and b.lipschitz else None,
                a is not None,
                b is not None,
            )
        )
    return Drift(old, new, changes, fail_if_grows)
