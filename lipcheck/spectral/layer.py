"""Per-layer numbers: sigma in torch's convention and a certified Lipschitz interval."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import math
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import numpy as np
import torch

from lipcheck.formats.limits import check_layer_size, memory_bytes
from lipcheck.model import Interval, Layer
from lipcheck.settings import Settings
from lipcheck.spectral import conv as conv_module
from lipcheck.spectral import conv_fourier, conv_groups, lapack
from lipcheck.spectral.conv import ConvInterval, any_size_factor, operator_interval, operator_upper
from lipcheck.spectral.dense import IN_PLACE_FROM, SpectralEstimate, certify, certify_batch, peak_abs

METHOD_DENSE = "Lanczos (lower), Cholesky certificate (upper)"
# Same-shaped layers are certified together while their Gram matrices stay this small (elements):
# on a CPU the batch must stay in cache; a GPU takes far more.
_BATCH_GRAM_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
_BATCH_WEIGHT_ELEMENTS = 1 << 24
# Batches certified side by side on a CPU (each holds its weights while it runs).
_MAX_WORKERS = 4
# Conv operator results kept per (weight, geometry, input size, settings): a layer seen twice
# (shared weights, or the same file inspected again) is worked out once.
_CONV_CACHE_SIZE = 512
_conv_cache: dict[tuple[object, ...], object] = {}
_conv_cache_lock = threading.Lock()
METHOD_CONV_NO_GEOMETRY = (
    "no geometry in the file: sqrt(kernel taps) * upper sigma, for any stride, dilation and groups with "
    "zero padding, or circular padding no wider than the kernel's reach ((k-1)*dilation per axis); an ONNX "
    "or TorchScript file gives the operator norm"
)
METHOD_CONV_ANY_SIZE = (
    "input size unknown: sqrt(max taps per input position) * upper sigma, valid for every input size; pass --input-shape for the operator norm"
)
METHOD_CONV_TOO_LARGE = (
    "input size too large for the operator norm in this machine's memory: sqrt(max taps per input position) * upper sigma, valid for every input size"
)
METHOD_CONV_1X1 = "1x1 conv: the operator norm is sigma(W) at every input size"
# Per layer index, the output-channel scales of the batch norms folded into it (see estimate_all).
Folds = Mapping[int, Sequence[np.ndarray]]


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
    batches: list[list[int]] = []
    for (rows, cols), members in by_shape.items():
        side = min(rows, cols)
        size = max(1, min(gram_budget // max(1, side * side), _BATCH_WEIGHT_ELEMENTS // max(1, rows * cols)))
        batches.extend(members[start : start + size] for start in range(0, len(members), size))
    return sorted(batches, key=lambda batch: batch[0])


def estimate_all(layers: list[Layer], settings: Settings, folds: Folds | None = None) -> Generator[tuple[int, LayerEstimate], None, None]:
    """Estimate layers, same-shaped ones in one batched iteration; yields (index, estimate) as done.

    ``folds``: per layer index, the output-channel scales of batch norms the graph bound will fold
    into it. A conv certifies its folded twins along the way, from its own Gram products where
    they serve (operator_interval's ``row_scales``), and leaves them for fused_upper.

    Weights are loaded a batch at a time and stay in their stored dtype; the certificate reads
    them in float64 blocks, so memory tracks the largest batches in flight, not the model. On a
    CPU with several threads, batches run side by side, one per thread, each single-threaded: the
    iteration's many small operations then overlap instead of leaving cores idle (1.4x on
    BERT-base on two cores), and every operation's rounding is independent of the schedule. A
    conv whose operator norm is wanted at a known input size becomes a task of its own once its
    batch is done, so convs run side by side too and each is yielded as it finishes.
    The caller's torch thread settings are the same at every yield and after as before; numpy's and SciPy's
    BLAS keep the workers' thread count until the generator is done.
    """
    batches = _batches(layers, settings.device)
    threads = torch.get_num_threads()
    workers = _workers(settings.device, threads, len(layers))
    factorizations = settings.device == "cpu" and any(_needs_operator(layer) or min(matrix_shape(layer)) >= IN_PLACE_FROM for layer in layers)
    try:
        with blas_threads(threads if workers == 1 else 1, factorizations=factorizations):
            yield from _estimate_batches(layers, batches, settings, workers, threads, folds or {})
    finally:
        conv_fourier.release_scratch()


def _estimate_batches(
    layers: list[Layer], batches: list[list[int]], settings: Settings, workers: int, threads: int, folds: Folds
) -> Generator[tuple[int, LayerEstimate], None, None]:
    """estimate_all's schedule: one batch after another, or side by side on ``workers`` threads."""
    if workers == 1:
        for batch in batches:
            for index, result in _estimate_batch(layers, batch, settings, folds):
                yield index, result() if callable(result) else result
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lipcheck")
    # Conv tasks wait in a heap and each pool job runs the costliest one waiting, so the largest
    # convs start first and the last to finish are small ones.
    queue: list[tuple[float, int, int, Pending]] = []
    queue_lock = threading.Lock()

    def run_costliest() -> tuple[int, LayerEstimate]:
        with queue_lock:
            _, _, index, task = heapq.heappop(queue)
        return index, task()

    try:
        _single_threaded_workers(pool, workers, threads)
        pending: set[Future] = {pool.submit(_estimate_batch, layers, batch, settings, folds) for batch in batches}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                if isinstance(result, tuple):  # one conv's operator interval
                    yield result
                    continue
                for index, found in result:
                    if callable(found):
                        with queue_lock:
                            heapq.heappush(queue, (-_operator_cost(layers[index]), index, index, found))
                        pending.add(pool.submit(run_costliest))
                    else:
                        yield index, found
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def side_by_side(tasks: list[Callable[[], object]], device: str, *, factorizations: bool = False) -> list[object]:
    """Run independent tasks as estimate_all runs its batches (on a CPU, one per thread, each
    single-threaded), in the order given; return their results in that order.

    ``factorizations``: the tasks certify convs (blas_threads loads SciPy's LAPACK first).
    """
    threads = torch.get_num_threads()
    workers = _workers(device, threads, len(tasks))
    if workers == 1:
        try:
            with blas_threads(threads, factorizations=factorizations):
                return [task() for task in tasks]
        finally:
            conv_fourier.release_scratch()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lipcheck")
    try:
        with blas_threads(1, factorizations=factorizations):
            _single_threaded_workers(pool, workers, threads)
            futures = [pool.submit(task) for task in tasks]
            return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def blas_threads(count: int, *, factorizations: bool = False) -> Iterator[None]:
    """Run numpy's and SciPy's BLAS and LAPACK (the conv certificates' factorizations) on ``count`` threads.

    Tasks side by side are single-threaded in torch; a BLAS thread pool would otherwise start one
    thread per core inside each of them. ``factorizations``: the tasks factor conv certificates'
    blocks, so SciPy's LAPACK is loaded first and limited with the others.
    """
    from threadpoolctl import threadpool_limits

    if factorizations:
        lapack.load()

    with threadpool_limits(limits=count, user_api="blas"):
        yield


def _workers(device: str, threads: int, jobs: int) -> int:
    """Jobs run side by side on a CPU, one per thread (at most _MAX_WORKERS); one at a time elsewhere."""
    return 1 if device != "cpu" else max(1, min(_MAX_WORKERS, threads, jobs))


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


Pending = Callable[[], LayerEstimate]


def _estimate_batch(layers: list[Layer], batch: list[int], settings: Settings, folds: Folds) -> list[tuple[int, LayerEstimate | Pending]]:
    """Load one batch of same-shaped layers and certify them together.

    A conv that needs its operator norm at an input size comes back as a function that computes
    it (holding its weight until then); every other layer's estimate is final.
    """
    done: list[tuple[int, LayerEstimate | Pending]] = []
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
        warm = [_warm_start(layers[i]) for i, _ in loaded]
        found = certify_batch(
            [sigma_matrix(layers[i], w) for i, w in loaded],
            tol=settings.tol,
            max_iter=settings.max_iter,
            seed=settings.seed,
            u0s=warm,
            device=settings.device,
            peaks=peaks,
        )
        for (index, weight), est in zip(loaded, found):
            layer = layers[index]
            if _needs_operator(layer):
                done.append((index, _deferred(layer, weight, est, settings, folds.get(index, ()))))
            else:
                done.append((index, _layer_estimate(layer, weight, est, settings)))
    return done


def _warm_start(layer: Layer) -> torch.Tensor | None:
    warm_u = layer.warm_u
    return warm_u() if warm_u is not None else None


def _deferred(layer: Layer, weight: torch.Tensor, est: SpectralEstimate, settings: Settings, scales: Sequence[np.ndarray]) -> Pending:
    return lambda: _layer_estimate(layer, weight, est, settings, scales)


def _operator_cost(layer: Layer) -> float:
    """A rough cost of a conv's operator interval: per-frequency factorizations plus the lower end's convs.

    About prod(spatial) / s^D frequencies, each a factorization of the smaller Gram side n (cubic),
    and some tens of applications of the conv itself.
    """
    shape, geometry, spatial = layer.shape, layer.geometry, layer.input_spatial
    if geometry is None or spatial is None or len(shape) < 3:
        return 0.0
    groups = max(1, geometry.groups)
    phases = math.prod(geometry.stride) if geometry.stride else 1
    side = min(shape[0] // groups, shape[1] * phases)
    size = math.prod(spatial)
    return groups * size / phases * side**3 / 2 + 40.0 * size * shape[0] * math.prod(shape[1:])


def _needs_operator(layer: Layer) -> bool:
    """Whether a conv's interval comes from its operator at a known input size (the costly path)."""
    geometry = layer.geometry
    if not layer.is_conv or geometry is None or layer.input_spatial is None:
        return False
    trivial = math.prod(layer.shape[2:]) == 1 and geometry.groups == 1 and not any(geometry.padding)
    return not trivial and not _too_large(layer)


def _too_large(layer: Layer) -> bool:
    """Whether a conv's operator at its input size would not fit in half this machine's memory."""
    assert layer.geometry is not None and layer.input_spatial is not None
    return conv_module.operator_bytes(layer.shape, layer.geometry, layer.input_spatial, layer.is_transposed) > memory_bytes() // 2


def _layer_estimate(layer: Layer, weight: torch.Tensor, est: SpectralEstimate, settings: Settings, scales: Sequence[np.ndarray] = ()) -> LayerEstimate:
    if not layer.is_conv:
        interval = Interval(est.sigma, est.upper, METHOD_DENSE)
        return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.certificate_steps, est.converged, est.iterations, est.converged)
    interval, behind = _conv_interval(layer, weight.to(torch.float64), est, settings, scales)
    return LayerEstimate(est.sigma, est.upper, interval, behind.iterations, behind.certificate_steps, behind.converged, est.iterations, est.converged)


def _conv_interval(
    layer: Layer, weight: torch.Tensor, est: SpectralEstimate, settings: Settings, scales: Sequence[np.ndarray] = ()
) -> tuple[Interval, SpectralEstimate | ConvInterval]:
    """The operator norm of a conv (exact-ish at a known input size, else a bound for every size),
    and the iteration that interval comes from; the operator's upper ends with ``scales`` folded in
    go to the cache fused_upper reads, where they come along."""
    kernel = tuple(weight.shape[2:])
    # A ConvTranspose is the adjoint of the conv with the same weight read as (out = dim 0), so
    # the dim-0 matrix bounds both; for a Conv that is sigma's own matrix.
    bound = est
    if layer.is_transposed:
        bound = certify(weight.reshape(weight.shape[0], -1), tol=settings.tol, max_iter=settings.max_iter, seed=settings.seed, device=settings.device)
    geometry = layer.geometry
    if geometry is None:
        return Interval(None, math.sqrt(math.prod(kernel)) * bound.upper, METHOD_CONV_NO_GEOMETRY), bound
    any_size = any_size_factor(kernel, geometry) * bound.upper
    if math.prod(kernel) == 1 and geometry.groups == 1 and not any(geometry.padding):
        # A 1x1 conv applies W at every position: its norm is sigma(W) at any size.
        return Interval(est.sigma, est.upper, METHOD_CONV_1X1), est
    spatial = layer.input_spatial
    if spatial is None:
        return Interval(None, any_size, METHOD_CONV_ANY_SIZE), bound
    if _too_large(layer):
        return Interval(None, any_size, METHOD_CONV_TOO_LARGE), bound
    if layer.is_transposed:
        scales = ()
    key = _conv_key("interval", weight, layer, settings) + tuple(scale.tobytes() for scale in scales)
    found = _cached(
        key,
        lambda: operator_interval(
            weight,
            geometry,
            spatial,
            layer.is_transposed,
            tol=settings.tol,
            max_iter=settings.max_iter,
            seed=settings.seed,
            upper_cap=any_size,
            device=settings.device,
            row_scales=[torch.as_tensor(scale, dtype=torch.float64) for scale in scales],
        ),
    )
    assert isinstance(found, ConvInterval)
    for scale, value in zip(scales, found.scaled_uppers):
        if scale.size != weight.shape[0]:
            continue
        folded = folded_weight(weight, scale)
        fused_key = _conv_key("upper", folded, layer, settings)
        if value is not None:
            _cache_put(fused_key, value)
        elif math.isfinite(peak_abs(folded)):
            # Worked out here, in the conv pool, rather than after every layer is done; should it
            # fail, fused_upper tries again and the graph bound reports why.
            with contextlib.suppress(Exception):
                _cached(fused_key, functools.partial(_operator_upper, folded, layer, settings))
    return Interval(found.lower, found.upper, found.method), found


def _operator_upper(weight: torch.Tensor, layer: Layer, settings: Settings) -> float:
    """The conv's certified operator upper end at its input size (the graph bound needs no lower end)."""
    assert layer.geometry is not None and layer.input_spatial is not None
    return operator_upper(
        weight,
        layer.geometry,
        layer.input_spatial,
        layer.is_transposed,
        tol=settings.tol,
        max_iter=settings.max_iter,
        seed=settings.seed,
        device=settings.device,
    )


def _conv_key(kind: str, weight: torch.Tensor, layer: Layer, settings: Settings) -> tuple[object, ...]:
    digest = hashlib.blake2b(weight.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).hexdigest()
    return (
        kind,
        digest,
        str(weight.dtype),
        tuple(weight.shape),
        layer.geometry,
        layer.input_spatial,
        layer.is_transposed,
        settings.tol,
        settings.max_iter,
        settings.seed,
        settings.device,
        conv_module.EXPLICIT_MAX_SIDE,
        conv_groups.MAX_SIDE,
    )


def _cached(key: tuple[object, ...], compute: Callable[[], object]) -> object:
    with _conv_cache_lock:
        if key in _conv_cache:
            return _conv_cache[key]
    value = compute()
    _cache_put(key, value)
    return value


def _cache_put(key: tuple[object, ...], value: object) -> None:
    with _conv_cache_lock:
        if len(_conv_cache) >= _CONV_CACHE_SIZE:
            _conv_cache.pop(next(iter(_conv_cache)))
        _conv_cache[key] = value


def folded_weight(weight: torch.Tensor, scale: np.ndarray) -> torch.Tensor:
    """The weight in float64 with output channel i scaled by scale[i] (a batch norm folded in)."""
    w = weight.to(torch.float64)
    if w.shape[0] != scale.size:
        raise ValueError("batch-norm channels do not match the layer's outputs")
    return w * torch.as_tensor(scale, dtype=torch.float64).reshape(-1, *([1] * (w.dim() - 1)))


def fused_upper(layer: Layer, load: Callable[[], torch.Tensor], settings: Settings) -> float | None:
    """A certified upper bound for a layer whose weight ``load`` returns (a batch norm folded in).

    A conv at a known input size takes only the operator's upper end (the circular certificate):
    the graph bound needs no lower end. The weight given is the float64 product of the layer and
    the batch-norm scales, each entry within a relative 2^-53 of the exact product, so the exact
    fused operator differs by at most 2^-53 * ||W||_F times the taps-per-input factor
    (any_size_factor; 1 for a matrix), which is added.
    """
    weight = load().to(torch.float64)
    if not math.isfinite(peak_abs(weight)):
        return None
    geometry = layer.geometry
    if layer.is_conv and geometry is not None:
        factor = any_size_factor(tuple(weight.shape[2:]), geometry)
    elif layer.is_conv:
        factor = math.sqrt(math.prod(weight.shape[2:]) * 3 ** (weight.dim() - 2))
    else:
        factor = 1.0
    margin = 2.0**-52 * factor * float(weight.norm()) * 1.01
    spatial = layer.input_spatial
    if _needs_operator(layer) and not layer.is_transposed:
        assert geometry is not None and spatial is not None
        value = float(_cached(_conv_key("upper", weight, layer, settings), functools.partial(_operator_upper, weight, layer, settings)))  # type: ignore[arg-type]
        # With zero padding the circular bound is at most the size-free one (Cauchy-Schwarz over the
        # taps) up to its margins: that one, a dense certificate of its own, only stands in where the
        # certificate gave nothing finite.
        sized = value if math.isfinite(value) else _any_size_upper(layer, weight, settings)
        return sized + margin
    est = estimate(replace(layer, load=lambda: weight, warm_u=None), settings)
    return est.lipschitz.upper + margin if est.lipschitz is not None else None


def _any_size_upper(layer: Layer, weight: torch.Tensor, settings: Settings) -> float:
    """The size-free conv bound: any_size_factor times a certified sigma of the reshaped weight."""
    assert layer.geometry is not None
    est = certify(weight.reshape(weight.shape[0], -1), tol=settings.tol, max_iter=settings.max_iter, seed=settings.seed, device=settings.device)
    return any_size_factor(tuple(weight.shape[2:]), layer.geometry) * est.upper
