"""Native CPU kernels: DoReFa Eq. 12, DoReFa Eq. 11's forward, PACT's forward and LSQ's forward
and backward in one pass over memory each, built from C on first use.

The gradient quantizer is element-wise, but as torch operations it makes about 13 passes over
the gradient (the noise hash alone is six), and at G = 8 it was a quarter of a NIN training
step. PACT's forward (clamp, divide, round, multiply) and DoReFa's activation quantizer (clamp,
multiply, round, divide) are four passes each, LSQ's forward four and its backward about ten
(with one step size per tensor, as activations have). ``native_kernels.c`` does the same
arithmetic in one read and one write (LSQ: two), split over torch's OpenMP threads. The kernels
give the same bits as the tensor paths (tests/test_native.py), so runs do not change when they
are used; where they cannot be, the tensor paths run as before:

- they are built with the system's C compiler (``$CC``, else ``cc``/``gcc``) into
  ``$XDG_CACHE_HOME/lowbit`` (``~/.cache/lowbit``) the first time a process needs it, about a
  second, once per source, compiler flags and CPU (``-march=native``: a library built on one
  CPU is never loaded on another, e.g. through a shared home on a cluster);
- no compiler, or a build that fails: one warning, then the tensor paths for the whole process;
- ``LOWBIT_NATIVE_KERNELS=0`` switches them off (benchmarks compare the two this way);
- CUDA tensors and 16-bit floats keep the tensor paths. torch.compile calls the Eq. 12 kernel
  through one custom operator (``lowbit::eq12_gradient``, in ``lowbit.quant.functional``), so
  compiled and eager runs draw the same bits on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SWITCH = "LOWBIT_NATIVE_KERNELS"
SOURCE = Path(__file__).with_name("native_kernels.c")
# -ffp-contract=off: the compiler fuses no multiply-add on its own (the kernel fuses exactly
# where torch does); -fno-math-errno lets nearbyintf vectorise; -fopenmp binds to the libgomp
# torch loaded.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")
FLAGS += ("-shared", "-fPIC")


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_identity() -> str:
    """The CPU's model and feature flags (Linux), else the architecture: what -march=native
    depends on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "".join(sorted(set(wanted)))


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lowbit"


def library_path(cc: str) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (cc, " ".join(FLAGS), cpu_identity()):
        digest.update(part.encode())
    return cache_dir() / f"kernels_{digest.hexdigest()[:16]}.so"


def build(cc: str, target: Path) -> None:
    """Compiles into a temporary file and renames it: processes building at once (DDP ranks,
    sweep jobs side by side) never load a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *FLAGS, str(SOURCE), "-o", temporary],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


_POINTER, _INT64, _UINT32, _FLOAT, _INT = (
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_uint32,
    ctypes.c_float,
    ctypes.c_int,
)
# Each kernel of native_kernels.c: its arguments' C types, in order, with what they are. All
# return nothing and take torch's intra-op thread count last.
SIGNATURES = {
    "lowbit_eq12": [
        (_POINTER, "gradient"),
        (_POINTER, "out"),
        (_INT64, "rows"),
        (_INT64, "cols"),
        (_POINTER, "scale (per row)"),
        (_POINTER, "step (per row)"),
        (_POINTER, "-m (per row)"),
        (_UINT32, "golden"),
        (_UINT32, "offset"),
        (_UINT32, "multiplier"),
        (_UINT32, "mix"),
        (_FLOAT, "levels"),
        (_INT, "threads"),
    ],
    "lowbit_pact_forward": [
        (_POINTER, "x"),
        (_POINTER, "out"),
        (_INT64, "elements"),
        (_FLOAT, "alpha"),
        (_FLOAT, "step = alpha / n"),
        (_INT, "threads"),
    ],
    "lowbit_clip_to_grid": [
        (_POINTER, "x"),
        (_POINTER, "out"),
        (_INT64, "elements"),
        (_FLOAT, "low"),
        (_FLOAT, "levels n"),
        (_INT, "threads"),
    ],
    "lowbit_lsq_forward": [
        (_POINTER, "x"),
        (_POINTER, "v = x / s (out)"),
        (_POINTER, "y (out)"),
        (_INT64, "elements"),
        (_FLOAT, "step s"),
        (_FLOAT, "-Qn"),
        (_FLOAT, "Qp"),
        (_INT, "threads"),
    ],
    "lowbit_lsq_backward": [
        (_POINTER, "upstream gradient g"),
        (_POINTER, "v"),
        (_POINTER, "grad_x (out)"),
        (_POINTER, "Eq. 3's terms (out)"),
        (_INT64, "elements"),
        (_FLOAT, "-Qn"),
        (_FLOAT, "Qp"),
        (_INT, "threads"),
    ],
}


@cache
def kernels() -> ctypes.CDLL | None:
    """The loaded kernels, or None (switched off, no compiler, or the build failed)."""
    if not enabled():
        return None
    cc = compiler()
    if cc is None:
        log.warning("no C compiler found: the quantizers run as torch operations (slower)")
        return None
    target = library_path(cc)
    try:
        if not target.exists():
            build(cc, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        log.warning("the native kernels did not build (%s); using torch operations", detail)
        return None
    for name, argument_types in SIGNATURES.items():
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [argument for argument, _meaning in argument_types]
    return library


@torch.compiler.assume_constant_result
def built() -> bool:
    """Whether the kernels are there; torch.compile asks once at trace time and keeps the answer
    (tracing into the build would break the graph)."""
    return kernels() is not None


def usable(tensor: torch.Tensor) -> bool:
    """A float32 CPU tensor, and the kernels built."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and built()


def quantize_gradient_rows(
    rows: torch.Tensor,
    key: torch.Tensor,
    scale: torch.Tensor,
    step: torch.Tensor,
    neg_max: torch.Tensor,
    golden: int,
    mix: int,
    levels: int,
) -> torch.Tensor:
    """Eq. 12 of a 2-d float32 gradient (one row per sample) with per-row ``scale`` = 2^32 n /
    2m, ``step`` = 2m / n and ``neg_max`` = -m; ``key`` is the draw's 0-d int64 key (offset in
    its low 32 bits, multiplier above), ``golden`` and ``mix`` the hash's constants. Eager
    only: torch.compile reaches it through the custom operator ``lowbit::eq12_gradient``
    (``lowbit.quant.functional``), which it cannot trace into."""
    rows = rows.contiguous()
    columns = [t.reshape(-1).contiguous() for t in (scale, step, neg_max)]
    out = torch.empty_like(rows)
    key_value = int(key)
    kernels().lowbit_eq12(
        rows.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        rows.shape[1],
        *(c.data_ptr() for c in columns),
        golden,
        key_value & 0xFFFFFFFF,
        key_value >> 32,
        mix,
        float(levels),
        torch.get_num_threads(),
    )
    return out


def dense_layout(t: torch.Tensor) -> torch.memory_format | None:
    """The memory format ``t`` is dense in (contiguous first), or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is dense in memory (``dense_layout``), else a contiguous copy: the
    element-wise kernels walk the elements in memory order, whatever the layout."""
    return x if dense_layout(x) is not None else x.contiguous()


def pact_forward(x: torch.Tensor, alpha: float, step: float) -> torch.Tensor:
    """PACT's quantized output of a float32 CPU tensor, eager only (the autograd Function's
    forward calls it; compiled code fuses the tensor path itself). Element-wise, so any dense
    layout is passed as it is (a channels-last activation is not copied to NCHW): the output
    has the input's strides."""
    x = dense(x)
    out = torch.empty_like(x)
    kernels().lowbit_pact_forward(
        x.data_ptr(), out.data_ptr(), x.numel(), alpha, step, torch.get_num_threads()
    )
    return out


def clip_to_grid(x: torch.Tensor, low: float, levels: int) -> torch.Tensor:
    """DoReFa Eq. 11's quantized output, round(clamp(x, low, 1) n) / n, of a float32 CPU
    tensor, eager only (``_ClipToGrid``'s forward calls it; compiled code fuses the tensor path
    itself). Element-wise: any dense layout is passed as it is, and the output has its strides."""
    x = dense(x)
    out = torch.empty_like(x)
    kernels().lowbit_clip_to_grid(
        x.data_ptr(), out.data_ptr(), x.numel(), low, float(levels), torch.get_num_threads()
    )
    return out


def lsq_forward(
    x: torch.Tensor, step: float, qn: int, qp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LSQ's (v = x / s, round(clamp(v, -Qn, Qp)) s) of a float32 CPU tensor and one step size,
    eager only (``_LSQ``'s forward calls it). Both outputs have ``x``'s strides (any dense
    layout; others are made contiguous first)."""
    x = dense(x)
    v, out = torch.empty_like(x), torch.empty_like(x)
    kernels().lowbit_lsq_forward(
        x.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        x.numel(),
        step,
        float(-qn),
        float(qp),
        torch.get_num_threads(),
    )
    return v, out


def lsq_backward(
    g: torch.Tensor, v: torch.Tensor, qn: int, qp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, Eq. 3's terms) of LSQ's backward, element by element; ``g`` and ``v`` must
    share one dense layout (``_LSQ.backward`` checks it, else runs the tensor path), and both
    outputs have it."""
    grad_x, terms = torch.empty_like(v), torch.empty_like(v)
    kernels().lowbit_lsq_backward(
        g.data_ptr(),
        v.data_ptr(),
        grad_x.data_ptr(),
        terms.data_ptr(),
        v.numel(),
        float(-qn),
        float(qp),
        torch.get_num_threads(),
    )
    return grad_x, terms
