"""Make MLX's Linux CPU build use OpenBLAS instead of the reference BLAS.

The Linux ``mlx[cpu]`` wheel ships the netlib reference BLAS (``libblas``),
which runs a 1024x1024 float32 matmul at ~3 GFLOP/s. If OpenBLAS is loaded
into the process with ``RTLD_GLOBAL`` *before* ``mlx.core`` is imported, the
dynamic linker resolves MLX's ``cblas_*`` symbols to OpenBLAS instead (the
global scope is searched before a library's own dependencies), giving ~30x
faster float32 matmuls. Python imports extension modules with ``RTLD_NOW``,
so MLX's symbols are bound at import time: after that it is too late.

Nothing here is needed on macOS, where MLX uses Accelerate.
"""

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

DISABLE_ENV = "MEDUSA_NO_OPENBLAS"

# Debian/Ubuntu multiarch locations (libopenblas0-pthread / -openmp / -serial).
_DEBIAN_OPENBLAS = [
    "/usr/lib/{arch}/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{arch}/openblas-serial/libopenblas.so.0",
    "/usr/lib/{arch}/libopenblas.so.0",
]
_ARCHES = ["x86_64-linux-gnu", "aarch64-linux-gnu"]

# Which library serves BLAS calls, recorded by preload_openblas().
_preloaded_path: str | None = None


def find_openblas() -> str | None:
    """Path of a system libopenblas.so.0, or None."""
    for arch in _ARCHES:
        for pattern in _DEBIAN_OPENBLAS:
            candidate = Path(pattern.format(arch=arch))
            if candidate.exists():
                return str(candidate)
    # find_library returns a soname ("libopenblas.so.0") that dlopen can resolve.
    return ctypes.util.find_library("openblas")


def preload_openblas() -> str | None:
    """Load OpenBLAS globally so MLX binds to it; return its path or None.

    Does nothing (returns None) off Linux, when ``MEDUSA_NO_OPENBLAS`` is set,
    when no OpenBLAS is installed, or when ``mlx.core`` is already imported
    (its BLAS symbols are then already bound). Call it before anything imports
    mlx. Calling it twice is harmless.
    """
    global _preloaded_path
    if _preloaded_path is not None:
        return _preloaded_path
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get(DISABLE_ENV):
        return None
    if "mlx.core" in sys.modules:
        return None
    path = find_openblas()
    if path is None:
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        # A broken or foreign-arch library: keep MLX's own BLAS rather than fail.
        return None
    _preloaded_path = path
    return path


def _mapped_libraries() -> list[str]:
    """Paths of the shared objects mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in lines if ".so" in line}
    return sorted(p for p in paths if p.startswith("/"))


def _global_cblas_provider() -> str | None:
    """File that the global symbol scope resolves ``cblas_sgemm`` to, if any.

    MLX's BLAS library is loaded privately (RTLD_LOCAL), so this is only
    non-None when some BLAS was loaded globally, e.g. by preload_openblas()
    or LD_PRELOAD; that library is then the one MLX calls.
    """

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        libc = ctypes.CDLL(None)
        address = ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p).value
        dladdr = libc.dladdr
    except AttributeError:
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)


def blas_info() -> dict:
    """Which BLAS this process uses for MLX's CPU matmuls.

    Keys: ``library`` ("Accelerate", "openblas", "reference", "other" or
    "unknown"), ``path`` (the file, when known), ``preloaded`` (the path
    loaded by preload_openblas(), or None), ``mlx_imported``.
    """
    info = {
        "library": "unknown",
        "path": None,
        "preloaded": _preloaded_path,
        "mlx_imported": "mlx.core" in sys.modules,
    }
    if sys.platform == "darwin":
        info["library"] = "Accelerate"
        return info

    provider = _global_cblas_provider()
    if provider is not None:
        info["path"] = provider
        info["library"] = "openblas" if "openblas" in provider.lower() else "other"
        return info

    mapped = _mapped_libraries()
    # MLX's wheel bundles a renamed reference BLAS, e.g. mlx_cpu.libs/libblas-<hash>.so.3.
    reference = [p for p in mapped if Path(p).name.startswith("libblas")]
    if reference:
        info["library"] = "reference"
        info["path"] = reference[0]
    return info

