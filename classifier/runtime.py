"""How a backbone's pooled features are computed from uint8 crops: the arithmetic a version records, and the
graph that runs it.

Two precisions:

- ``float32``: the folded backbone in float32 (finetune and scratch versions, other backbones, versions made
  before ``bfloat16-mixed`` existed, and head versions on a CPU without native bfloat16).
- ``bfloat16-mixed`` (:data:`MIXED`): the stem and the first inverted-residual block in float32, every later
  block in bfloat16, pooled in float32. MobileNetV2-style backbones only (``conv_stem``, ``layer``,
  ``conv_1x1``). Measured on 128 Fashion-MNIST images: all-bfloat16 features had a cosine of 0.94 to float32 at
  worst, nearly all of the error made in the first block; with it in float32 the worst cosine is 0.998, so a
  head trained on these features also works on float32 features (the stock ``pipeline``). The backbone forward
  is about 1.4× faster eager and 1.8× compiled on a CPU with native bfloat16 (avx512_bf16).

Each precision has one module from uint8 crops to pooled features (:class:`Float32Forward`,
:class:`MixedForward`), which normalises the crops itself, and a faster graph of it that the app builds once per
process and cache key when ``Settings.compile_backbone`` is on, in the background once it serves a version (it
serves eagerly until the graph is ready):

- ``bfloat16-mixed``: ``torch.compile`` (inductor, weights frozen), which fuses the normalisation into the first
  convolution, where a C++ compiler is found (about 4 s with inductor's on-disk cache warm, 18 s cold, on 2 cores).
- ``float32``: an ONNX Runtime session of the module (exported in memory in about 3 s; the same float32 arithmetic,
  within 1e-5 of eager). On an AVX2 CPU without native bfloat16 it ran the forward of 128 images in 1.10 s against
  1.75 s eagerly, where a compiled float32 graph made a whole prediction no faster.

Once built, a batch is timed both ways and the graph is kept only where it is the faster on this machine
(``graph`` in ``/status``'s ``model_runtime`` says which runs). Short-lived processes (the CLI, bulk jobs and their
Ray actors, training runs) run eagerly: building would cost them more than it saves, and a compiled Ray actor ran
slower than an eager one next to the Ray processes on 2 cores. Where building fails the eager module runs. An
image's features never depend on its batch: the compiled graph runs at one fixed batch size
(:data:`COMPILED_BATCH`, smaller batches are padded), and ONNX Runtime computes each image on its own at any batch
size (so the app's chunks of 1-8 images embedded as they upload cost what they hold).
"""
from __future__ import annotations

import copy
import io
import logging
import shutil
import threading
import time
import warnings

import torch

log = logging.getLogger(__name__)

FLOAT32 = "float32"
MIXED = "bfloat16-mixed"
FLOAT32_BLOCKS = 1
"""Inverted-residual blocks after the stem that stay in float32 under :data:`MIXED`."""
COMPILED_BATCH = 16
"""The one batch size the torch.compile graph runs at (the Embedder's batch size)."""
RETIMES, RETIME_PAUSE_S = 2, 2.0
"""Where the built graph did not beat eager at first, both are timed again (at most ``RETIMES`` times, ``RETIME_PAUSE_S``
apart) and each keeps its best: on this 2-core VM one busy moment timed the compiled graph at 0.162 s a batch against
0.150 s eagerly (0.087 s against 0.131 s on a quiet one), and the app then ran eagerly for its lifetime: 120 images
took 3.2-4.6 s instead of about 1.1 s."""


def supports_mixed(base: torch.nn.Module) -> bool:
    """Whether ``base`` (a transformers backbone) has the MobileNetV2 layout :data:`MIXED` splits."""
    return all(hasattr(base, name) for name in ("conv_stem", "layer", "conv_1x1")) and len(base.layer) > FLOAT32_BLOCKS


def bfloat16_native() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with avx512_bf16 / AMX); elsewhere bfloat16
    is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (n, 3, r, r) → ``(x / 255 - mean) / std`` in float32, the arithmetic of
    :func:`classifier.images.normalise_pixels` (bit for bit): every path from crops to features normalises here."""
    return (pixels.to(torch.float32) * (1.0 / 255.0) - mean) / std


def pooled(out) -> torch.Tensor:
    """A backbone's pooled features (n, d) from its output: ``pooler_output``, or the first token (ViT-style)."""
    pooled_output = getattr(out, "pooler_output", None)
    if pooled_output is None:
        pooled_output = out.last_hidden_state[:, 0]
    return pooled_output.flatten(1)


class Float32Forward(torch.nn.Module):
    """uint8 crops (n, 3, r, r) → pooled features (n, d) float32 through ``base`` (shared, not copied): the float32
    arithmetic as one module, for the ONNX Runtime graph and its timing against eager."""

    def __init__(self, base: torch.nn.Module, mean, std):
        super().__init__()
        self.base = base
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return pooled(self.base(pixel_values=normalise(crops, self.mean, self.std).contiguous(memory_format=torch.channels_last)))


class OnnxGraph:
    """An ONNX Runtime session of a :class:`Float32Forward`, called like it on uint8 crops of any batch size (each
    image is computed on its own: its features do not depend on its batch, so nothing is padded)."""

    def __init__(self, module: Float32Forward, example: torch.Tensor):
        import onnxruntime
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the TorchScript-based exporter: deprecated since torch 2.9, here in 2.13
            warnings.simplefilter("ignore", DeprecationWarning)
            # Traced on one image (tracing a batch of 16 held every activation: 0.5 GB more peak memory).
            torch.onnx.export(copy.deepcopy(module).eval(), (example[:1].contiguous(),), buffer, input_names=["crops"],
                              output_names=["features"], opset_version=17, dynamo=False,
                              dynamic_axes={"crops": {0: "n"}, "features": {0: "n"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: the app's other threads (uploads arriving, JPEG decoding,
        # the store) need the same cores between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"crops": crops.contiguous().numpy()})[0])


class MixedForward(torch.nn.Module):
    """uint8 crops (n, 3, r, r), any memory format → pooled features (n, d) float32, in :data:`MIXED` precision."""

    def __init__(self, base: torch.nn.Module, mean, std):
        super().__init__()
        base = copy.deepcopy(base).eval()
        self.early = torch.nn.Sequential(base.conv_stem, *base.layer[:FLOAT32_BLOCKS])
        self.late = torch.nn.Sequential(*base.layer[FLOAT32_BLOCKS:], base.conv_1x1).to(torch.bfloat16)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = normalise(crops, self.mean, self.std)
        return self.late(self.early(x).to(torch.bfloat16)).to(torch.float32).mean((2, 3))


def example_crops(n: int, resolution: int) -> torch.Tensor:
    """Zero uint8 crops (n, 3, r, r) in the layout every caller passes (channels_last). The compiled graph is
    specialised on its example's layout and on whether it is an inference tensor: one made outside
    ``inference_mode`` made the first real batch (built inside it) compile the graph again, 4 s on the first
    request and a second graph in memory."""
    return torch.zeros(n, resolution, resolution, 3, dtype=torch.uint8).permute(0, 3, 1, 2)


def compiler_available() -> bool:
    """Whether inductor can find a C++ compiler here."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


_compiled: dict[str, object] = {}
_started: dict[str, threading.Event] = {}
_lock = threading.Lock()


def started(key: str) -> bool:
    """Whether compiling the graph for ``key`` has begun in this process (it may have ended)."""
    return key in _started


def compiling(key: str) -> bool:
    """Whether the graph for ``key`` is being compiled right now."""
    done = _started.get(key)
    return done is not None and not done.is_set()


def compiled_already(key: str) -> bool:
    """Whether the graph for ``key`` is compiled in this process (never starts compiling)."""
    return _compiled.get(key) is not None


def compiled(key: str, module: torch.nn.Module, resolution: int, wait: bool = False):
    """The process's built graph of ``module`` (a :class:`Float32Forward` or :class:`MixedForward`) for ``key``
    (backbone id, resolution, precision), or None while it is being built (on a background thread, started by the
    first call) and where building is not possible, failed or gave a slower graph: the caller then runs ``module``
    eagerly. ``wait`` blocks until building has ended."""
    with _lock:
        done = _started.get(key)
        if done is None:
            done = _started[key] = threading.Event()
            threading.Thread(target=_compile, args=(key, module, resolution, done), daemon=True,
                             name=f"compile-{key}").start()
    if wait:
        done.wait()
    return _compiled.get(key)


def _compile(key: str, module: torch.nn.Module, resolution: int, done: threading.Event) -> None:
    onnx = isinstance(module, Float32Forward)
    kind = "ONNX Runtime" if onnx else "torch.compile"
    try:
        started = time.monotonic()
        with torch.inference_mode():  # an inference tensor, as every caller's crops are (see example_crops)
            example = example_crops(COMPILED_BATCH, resolution)
        if onnx:
            candidate = OnnxGraph(module, example)  # its memory arena fills on its first run, inside _timed
        else:
            if not compiler_available():
                log.info("No C++ compiler found: the %s backbone graph runs eagerly", MIXED)
                return
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # weights become constants: prepacked for oneDNN
            inductor_config.compile_threads = 1  # no pool of compile worker processes (memory)
            candidate = torch.compile(copy.deepcopy(module).eval(), dynamic=False)
            with torch.inference_mode():
                candidate(example)
        seconds = time.monotonic() - started
        compiled_s, eager_s = _timed(candidate, module, example, interleaved=not onnx)
        for _ in range(RETIMES):  # a busy moment of the machine must not decide for the process's lifetime
            if compiled_s < eager_s:
                break
            time.sleep(RETIME_PAUSE_S)
            again = _timed(candidate, module, example, interleaved=not onnx)
            compiled_s, eager_s = min(compiled_s, again[0]), min(eager_s, again[1])
        if compiled_s >= eager_s:
            log.info("Built the %s backbone graph for %s in %.1f s, but it ran a batch in %.3f s against %.3f s "
                     "eagerly on this machine: running it eagerly", kind, key, seconds, compiled_s, eager_s)
            return
        _compiled[key] = candidate
        log.info("Built the %s backbone graph for %s in %.1f s: a batch in %.3f s against %.3f s eagerly",
                 kind, key, seconds, compiled_s, eager_s)
    except Exception as exc:  # no working toolchain, an exporter or inductor limitation: eager is the same arithmetic
        log.warning("Could not build the %s backbone graph (%s); running it eagerly", kind,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        done.set()


def _timed(candidate, module: torch.nn.Module, example: torch.Tensor, repeats: int = 5,
           interleaved: bool = True) -> tuple[float, float]:
    """Best-of-``repeats`` seconds for one batch, built graph and eager: the per-machine choice. Interleaved
    (against a machine whose speed drifts), or eager first (ONNX Runtime: its memory arena is then filled from
    what the eager runs freed, instead of next to it, which cost the app 250 MB of peak memory)."""
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        module(example)  # eager warm-up
        order = ([(0, candidate), (1, module)] * repeats if interleaved
                 else [(1, module)] * repeats + [(0, candidate)] * (repeats + 1))  # its first run fills the arena
        for i, fn in order:
            start = time.perf_counter()
            fn(example)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]
