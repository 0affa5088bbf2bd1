"""Test-wide settings: CPU, and (opt-in) JAX's persistent compilation cache.

Set JAXLLM_JIT_CACHE=<dir> to reuse compiled programs across runs (most of
this suite's time is XLA compiling small programs). It is off by default:
with jax 0.10.2, two fresh-clone CI runs crashed a pytest worker with a
segmentation fault inside the cache itself (`compilation_cache.
get_executable_and_time`, then `put_executable_and_time` with an empty
cache directory), both while compiling a particle filter in the scaling
tests."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

if os.environ.get("JAXLLM_JIT_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["JAXLLM_JIT_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
