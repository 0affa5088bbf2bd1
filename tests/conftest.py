"""Test-wide settings: CPU, freeing compiled programs between test files, and
(opt-in) JAX's persistent compilation cache.

Every compiled XLA:CPU program keeps its own memory mappings (code and
constants) until the executable is freed, and jax keeps executables alive in
its jit caches for the life of the process. One pytest worker runs dozens of
test files and compiles thousands of small programs, so without the fixture
below a worker climbs to the kernel's `vm.max_map_count` (65530 here):
measured, one worker reached 47,787 mappings at 80% of the suite. Past the
limit LLVM's JIT cannot map a new program and the worker aborts inside
`backend_compile_and_load` (the CI crashes of session 6, in whichever test
was compiling at the time). Clearing jax's caches after each test file keeps
a worker's mappings bounded by the largest single file.

Set JAXLLM_JIT_CACHE=<dir> to reuse compiled programs across runs (most of
this suite's time is XLA compiling small programs). It is off by default:
with jax 0.10.2, two fresh-clone CI runs crashed a pytest worker inside the
cache itself (`compilation_cache.get_executable_and_time`), both late in the
suite, which is the same mapping exhaustion seen from another call site."""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("JAXLLM_JIT_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["JAXLLM_JIT_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops every jit cache (and the executables it holds) after each file."""
  yield
  jax.clear_caches()
  gc.collect()
