"""Per-layer numbers: sigma in torch's convention and a certified Lipschitz interval."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterator

import torch

from lipcheck.formats.limits import check_layer_size
from lipcheck.model import Interval, Layer
from lipcheck.settings import Settings
from lipcheck.spectral.conv import ConvInterval, any_size_factor, operator_interval
from lipcheck.spectral.dense import SpectralEstimate, certify, certify_batch, peak_abs

METHOD_DENSE = "Lanczos (lower), Cholesky certificate (upper)"
# Same-shaped layers are certified together while their Gram matrices stay this small (elements):
# on a CPU the batch must stay in cache; a GPU takes far more.
_BATCH_GRAM_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
_BATCH_WEIGHT_ELEMENTS = 1 << 24
# Batches certified side by side on a CPU (each holds its weights while it runs).
_MAX_WORKERS = 4
METHOD_CONV_NO_GEOMETRY = ("no geometry in the file: sqrt(kernel taps) * upper sigma, for any stride, dilation, groups and "
                           "zero/circular padding; an ONNX or TorchScript file gives the operator norm")
METHOD_CONV_ANY_SIZE = ("input size unknown: sqrt(max taps per input position) * upper sigma, valid for every input size; "
                        "pass --input-shape for the operator norm")
METHOD_CONV_1X1 = "1x1 conv: the operator norm is sigma(W) at every input size"


@dataclass(frozen=True)
class LayerEstimate:
    """What lipcheck knows about one layer's weight; all None when the weight is not finite.

    ``iterations``, ``certificate_steps`` and ``converged`` describe the ``lipschitz`` interval:
    for a conv at a known input size, the iteration on its operator (converged when
    upper - lower <= tol * upper), which is not the one behind ``sigma``. An interval with no lower
    end (a conv bound for every input size) is a multiple of a certified sigma bound, and reports
    that certificate. ``sigma_iterations`` and ``sigma_converged`` describe [sigma, sigma_upper].
    """

    sigma: float | None
    sigma_upper: float | None
    lipschitz: Interval | None
    iterations: int
    certificate_steps: int  # Cholesky factorizations tried
    converged: bool
    sigma_iterations: int = 0
    sigma_converged: bool = False


def sigma_matrix(layer: Layer, weight: torch.Tensor) -> torch.Tensor:
    """Reshape a weight as torch's spectral_norm does: rows are outputs (dim 1 for ConvTranspose)."""
    if layer.is_transposed:
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return weight.reshape(weight.shape[0], -1)


def matrix_shape(layer: Layer) -> tuple[int, int]:
    """The shape of sigma_matrix(layer, weight), read off the stored shape without loading."""
    shape = layer.shape
    rows = shape[1] if layer.is_transposed else shape[0]
    return rows, math.prod(shape) // max(1, rows)


def estimate(layer: Layer, settings: Settings) -> LayerEstimate:
    """Estimate one layer: sigma by Lanczos, and its Lipschitz interval."""
    return next(iter(estimate_all([layer], settings)))[1]


def _batches(layers: list[Layer], device: str) -> list[list[int]]:
    """Indices of the layers grouped by matrix shape, each group cut to the batch budget."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, layer in enumerate(layers):
        by_shape.setdefault(matrix_shape(layer), []).append(index)
    gram_budget = _BATCH_GRAM_ELEMENTS["cuda" if device.startswith("cuda") else "cpu"]
    batches = []
    for (rows, cols), members in by_shape.items():
        side = min(rows, cols)
        size = max(1, min(gram_budget // max(1, side * side), _BATCH_WEIGHT_ELEMENTS // max(1, rows * cols)))
        batches.extend(members[start:start + size] for start in range(0, len(members), size))
    return sorted(batches, key=lambda batch: batch[0])


def estimate_all(layers: list[Layer], settings: Settings) -> Iterator[tuple[int, LayerEstimate]]:
    """Estimate layers, same-shaped ones in one batched iteration; yields (index, estimate) as done.

    Weights are loaded a batch at a time and stay in their stored dtype; the certificate reads
    them in float64 blocks, so memory tracks the largest batches in flight, not the model. On a
    CPU with several threads, batches run side by side, one per thread, each single-threaded: the
    iteration's many small operations then overlap instead of leaving cores idle (1.4x on
    BERT-base on two cores), and every operation's rounding is independent of the schedule.
    The caller's torch thread settings are the same at every yield and after as before.
    """
    batches = _batches(layers, settings.device)
    threads = torch.get_num_threads()
    workers = 1 if settings.device != "cpu" else max(1, min(_MAX_WORKERS, threads, len(batches)))
    if workers == 1:
        for batch in batches:
            yield from _estimate_batch(layers, batch, settings)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lipcheck")
    try:
        _single_threaded_workers(pool, workers, threads)
        futures = [pool.submit(_estimate_batch, layers, batch, settings) for batch in batches]
        for future in as_completed(futures):
            yield from future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _single_threaded_workers(pool: ThreadPoolExecutor, workers: int, threads: int) -> None:
    """Start the pool's threads, each with one intra-op thread, and leave the caller's count as it was.

    With OpenMP, torch.set_num_threads sets the calling thread's own count, and also the count
    that threads not yet started take, which the caller's thread restores at once. Each start
    waits at a barrier until all have run, so each runs on a thread of its own.
    """
    barrier = threading.Barrier(workers + 1)

    def start() -> None:
        # A thread's first torch call sets its count from the shared one: make it now, not later.
        torch.get_num_threads()
        torch.set_num_threads(1)
        barrier.wait()

    try:
        for _ in range(workers):
            pool.submit(start)
        barrier.wait()
    except BaseException:
        barrier.abort()
        raise
    finally:
        torch.set_num_threads(threads)


def _estimate_batch(layers: list[Layer], batch: list[int], settings: Settings) -> list[tuple[int, LayerEstimate]]:
    """Load one batch of same-shaped layers, certify them together and release their weights."""
    done: list[tuple[int, LayerEstimate]] = []
    loaded: list[tuple[int, torch.Tensor]] = []
    peaks: list[float] = []
    for index in batch:
        layer = layers[index]
        check_layer_size(layer.display_name, layer.shape)
        weight = layer.load().detach()
        peak = peak_abs(weight)
        if not math.isfinite(peak):
            done.append((index, LayerEstimate(None, None, None, 0, 0, False)))
        else:
            loaded.append((index, weight))
            peaks.append(peak)
    if loaded:
        warm = [layers[i].warm_u() if layers[i].warm_u is not None else None for i, _ in loaded]
        found = certify_batch([sigma_matrix(layers[i], w) for i, w in loaded], tol=settings.tol,
                              max_iter=settings.max_iter, seed=settings.seed, u0s=warm, device=settings.device,
                              peaks=peaks)
        done.extend((index, _layer_estimate(layers[index], weight, est, settings))
                    for (index, weight), est in zip(loaded, found))
    return done


def _layer_estimate(layer: Layer, weight: torch.Tensor, est: SpectralEstimate, settings: Settings) -> LayerEstimate:
    if not layer.is_conv:
        interval = Interval(est.sigma, est.upper, METHOD_DENSE)
        return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.certificate_steps, est.converged,
                             est.iterations, est.converged)
    interval, behind = _conv_interval(layer, weight.to(torch.float64), est, settings)
    return LayerEstimate(est.sigma, est.upper, interval, behind.iterations, behind.certificate_steps, behind.converged,
                         est.iterations, est.converged)


def _conv_interval(layer: Layer, weight: torch.Tensor, est: SpectralEstimate,
                   settings: Settings) -> tuple[Interval, SpectralEstimate | ConvInterval]:
    """The operator norm of a conv (exact-ish at a known input size, else a bound for every size),
    and the iteration that interval comes from."""
    kernel = tuple(weight.shape[2:])
    # A ConvTranspose is the adjoint of the conv with the same weight read as (out = dim 0), so
    # the dim-0 matrix bounds both; for a Conv that is sigma's own matrix.
    bound = est
    if layer.is_transposed:
        bound = certify(weight.reshape(weight.shape[0], -1), tol=settings.tol, max_iter=settings.max_iter,
                        seed=settings.seed, device=settings.device)
    geometry = layer.geometry
    if geometry is None:
        return Interval(None, math.sqrt(math.prod(kernel)) * bound.upper, METHOD_CONV_NO_GEOMETRY), bound
    any_size = any_size_factor(kernel, geometry) * bound.upper
    if math.prod(kernel) == 1 and geometry.groups == 1 and not any(geometry.padding):
        # A 1x1 conv applies W at every position: its norm is sigma(W) at any size.
        return Interval(est.sigma, est.upper, METHOD_CONV_1X1), est
    if layer.input_spatial is None:
        return Interval(None, any_size, METHOD_CONV_ANY_SIZE), bound
    found = operator_interval(weight, geometry, layer.input_spatial, layer.is_transposed, tol=settings.tol,
                              max_iter=settings.max_iter, seed=settings.seed, upper_cap=any_size)
    return Interval(found.lower, found.upper, found.method), found
