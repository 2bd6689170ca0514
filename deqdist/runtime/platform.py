"""The accelerator the user asked for, or a one-line error: never a silent fall-back to the CPU.

JAX_PLATFORMS=tpu (or cuda, ...) makes JAX refuse to start without that
platform; we turn its traceback into a ConfigError. Without JAX_PLATFORMS, JAX
quietly falls back to the CPU when an installed accelerator plugin fails (a
TPU held by a stale process, a GPU whose driver does not load): that is an
error too, unless the user asks for the CPU (JAX_PLATFORMS=cpu).

Only an accelerator whose plugin is installed can fail. JAX registers its
built-in `tpu` backend whether or not libtpu is installed, so on a plain
`pip install deqdist` it always records "Failed to open libtpu.so": that is the
CPU install working as meant, not a failure. Likewise libtpu installed on a
host with no TPU chip at all (the `tpu` extra also serves `deqdist compile`):
nothing can hold a TPU that is not there, so JAX is told not to try it.
"""
from __future__ import annotations

import importlib.util
import os

from deqdist.typed_config import ConfigError


class PlatformError(ConfigError):
    pass


def _first_line(text: str) -> str:
    return next((l.strip() for l in str(text).splitlines() if l.strip()), "")[:300]


def _libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None or os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", ""))


def _cuda_plugin_installed() -> bool:
    return importlib.util.find_spec("jax_plugins") is not None and any(
        importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))


def _failed_accelerators() -> dict[str, str]:
    """Platform -> error of installed accelerator backends JAX tried and dropped (private JAX state, absent = none).

    Every backend but the built-in `tpu` one comes from a plugin the user installed, so its failure counts;
    `tpu` counts only when libtpu is there to fail.
    """
    try:
        from jax._src import xla_bridge
    except ImportError:
        return {}
    errors = dict(getattr(xla_bridge, "_backend_errors", {}) or {})
    return {p: e for p, e in errors.items()
            if p not in ("cpu", "interpreter") and (p != "tpu" or _libtpu_installed())}


def skip_absent_tpu() -> None:
    """Without JAX_PLATFORMS, keep JAX from starting libtpu on a host that has no TPU chip."""
    if os.environ.get("JAX_PLATFORMS", "").strip() or not _libtpu_installed():
        return
    import jax

    try:
        from jax._src import hardware_utils

        chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except Exception:  # private JAX module moved: keep JAX's own behaviour
        return
    if chips:
        return
    jax.config.update("jax_platforms", "cuda,cpu" if _cuda_plugin_installed() else "cpu")


def require_backend():
    """jax.devices() of the requested platform; PlatformError if it is missing or JAX fell back to the CPU."""
    import jax

    skip_absent_tpu()
    asked = os.environ.get("JAX_PLATFORMS", "").strip()
    try:
        devices = jax.devices()
    except Exception as e:  # RuntimeError, or a bare AssertionError when no backend of JAX_PLATFORMS exists
        why = _first_line(e) or f"{type(e).__name__}: no backend of that platform is installed"
        raise PlatformError(
            f"JAX_PLATFORMS={asked or '(unset)'} but JAX could not start it ({why}); check that the accelerator "
            f"and its JAX plugin are installed, present and free (no other process holds it), or set "
            f"JAX_PLATFORMS=cpu"
        ) from None
    if not asked and devices[0].platform == "cpu":
        failed = _failed_accelerators()
        if failed:
            p, err = next(iter(failed.items()))
            raise PlatformError(
                f"the {p} backend failed ({_first_line(err)}) and JAX fell back to the CPU; free the accelerator "
                f"(launch/tpu_vm.sh run clears stale TPU users), or set JAX_PLATFORMS=cpu to run on the CPU"
            )
    return devices
