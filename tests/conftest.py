"""Test-wide settings: CPU, and JAX's persistent compilation cache (most of
this suite's time is XLA compiling small programs; reruns reuse them)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update(
  "jax_compilation_cache_dir",
  os.environ.get("JAXLLM_JIT_CACHE", os.path.expanduser("~/.cache/jaxllm/xla")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
