"""Tests for experiments/analysis.py: fits recover known parameters, frontiers match
brute force, plots write PNGs."""

import numpy as np
import pytest

from experiments import analysis as an


def brute_frontier(compute, acc):
  keep = []
  for i in range(len(compute)):
    dominated = any(
      (
        compute[j] <= compute[i]
        and acc[j] >= acc[i]
        and (compute[j] < compute[i] or acc[j] > acc[i])
      )
      or (compute[j] == compute[i] and acc[j] == acc[i] and j < i)
      for j in range(len(compute))
      if j != i
    )
    if not dominated:
      keep.append(i)
  return sorted(keep, key=lambda i: compute[i])


def test_coverage_power_law_recovers_parameters():
  ks = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256], float)
  for a, b in ((-1.5, -0.3), (-0.4, -0.7), (-3.0, -0.15)):
    fit = an.fit_coverage_power_law(ks, np.exp(a * ks**b))
    assert fit.a == pytest.approx(a, rel=1e-5)
    assert fit.b == pytest.approx(b, rel=1e-5)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_coverage_power_law_with_noise():
  rng = np.random.default_rng(0)
  ks = np.geomspace(1, 1000, 25)
  cov = np.exp(-2.0 * ks**-0.4) * (1 + 0.005 * rng.standard_normal(ks.size))
  cov = np.clip(cov, 1e-6, 1.0)
  fit = an.fit_coverage_power_law(ks, cov)
  assert fit.a == pytest.approx(-2.0, rel=0.05)
  assert fit.b == pytest.approx(-0.4, rel=0.05)
  assert 0.98 < fit.r2 <= 1.0
  np.testing.assert_allclose(fit.predict(ks), np.exp(fit.a * ks**fit.b))


def test_log_linear_fit_exact_and_per_method():
  flops = np.array([1e12, 1e13, 1e14, 1e15])
  acc = 0.07 * np.log10(flops) - 0.5
  fit = an.fit_log_linear(flops, acc)
  assert fit.slope == pytest.approx(0.07)
  assert fit.intercept == pytest.approx(-0.5)
  assert fit.r2 == pytest.approx(1.0)
  fits = an.fit_accuracy_vs_flops({"sc": (flops, acc), "bon": (flops, 0.5 * acc + 0.2)})
  assert fits["bon"].slope == pytest.approx(0.035)
  assert fits["bon"].intercept == pytest.approx(-0.05)
  # R^2 of a noisy fit matches the textbook formula.
  y = acc + np.array([0.01, -0.02, 0.015, -0.005])
  fit = an.fit_log_linear(flops, y)
  x = np.log10(flops)
  slope, intercept = np.polyfit(x, y, 1)
  r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
  assert fit.r2 == pytest.approx(r2)


def test_pareto_frontier_vs_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(50):
    m = int(rng.integers(1, 30))
    compute = rng.integers(1, 8, m).astype(float)  # small ranges -> many ties
    acc = rng.integers(0, 6, m) / 5.0
    got = an.pareto_frontier(compute, acc).tolist()
    assert got == brute_frontier(compute, acc)


def test_compute_optimal_method_vs_brute_force():
  rng = np.random.default_rng(2)
  results = {
    name: (rng.integers(1, 50, 12).astype(float), rng.random(12))
    for name in ("sc", "bon", "pf")
  }
  budgets = np.array([0.5, 3, 10, 25, 49, 100])
  choice = an.compute_optimal_method(budgets, results)
  for j, b in enumerate(budgets):
    feasible = [
      (a, m) for m, (c, accs) in results.items() for ci, a in zip(c, accs) if ci <= b
    ]
    if not feasible:
      assert choice.methods[j] == "" and np.isnan(choice.accuracy[j])
      assert choice.index[j] == -1
      continue
    best_acc, best_m = max(feasible)
    assert choice.methods[j] == best_m
    assert choice.accuracy[j] == best_acc
    assert choice.compute[j] <= b


def test_compute_optimal_allocation_recovers_exponents():
  # Designed grid: at budget C_j the optimum is (S, V) = (C^0.57, C^0.39) with accuracy
  # rising in j; every other point is dominated by the optimum at its budget.
  rng = np.random.default_rng(3)
  rows = []
  budgets = 2.0 ** np.arange(4, 16)
  for j, c in enumerate(budgets):
    rows.append((c**0.57, c**0.39, 0.3 + 0.04 * j, c))
    for _ in range(5):  # distractors: more compute than C_j, less accuracy than its opt
      cc = c * rng.uniform(1.0, 1.99)
      rows.append(
        (
          rng.uniform(1, 100),
          rng.uniform(1, 30),
          0.3 + 0.04 * j - rng.uniform(0.001, 0.3),
          cc,
        )
      )
  s, v, acc, comp = map(np.array, zip(*rows))
  fit = an.fit_compute_optimal_allocation(s, v, acc, comp)
  np.testing.assert_allclose(fit.budgets, budgets)
  assert fit.s_exponent == pytest.approx(0.57)
  assert fit.v_exponent == pytest.approx(0.39)
  assert fit.s_coef == pytest.approx(1.0)
  assert fit.s_r2 == pytest.approx(1.0) and fit.v_r2 == pytest.approx(1.0)
  # Explicit budget levels between grid points pick the same optima.
  fit2 = an.fit_compute_optimal_allocation(s, v, acc, comp, budgets=budgets * 1.001)
  np.testing.assert_allclose(fit2.s_opt, budgets**0.57)
  np.testing.assert_allclose(fit2.v_opt, budgets**0.39)


def test_plots_write_png(tmp_path):
  flops = np.geomspace(1e12, 1e15, 6)
  results = {
    "sc": (flops, np.linspace(0.3, 0.6, 6)),
    "bon": (flops * 1.5, np.linspace(0.25, 0.65, 6)),
  }
  fits = an.fit_accuracy_vs_flops(results)
  p1 = an.plot_accuracy_vs_flops(
    results, str(tmp_path / "acc.png"), fits=fits, title="toy"
  )
  ks = np.array([1, 2, 4, 8, 16, 32])
  cov = np.exp(-1.0 * ks**-0.5)
  p2 = an.plot_coverage(
    ks, cov, str(tmp_path / "cov.png"), fit=an.fit_coverage_power_law(ks, cov)
  )
  for p in (p1, p2):
    data = open(p, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_validation_errors():
  with pytest.raises(ValueError, match="coverage"):
    an.fit_coverage_power_law([1, 2, 3], [0.0, 0.5, 0.6])
  with pytest.raises(ValueError, match="length mismatch"):
    an.fit_coverage_power_law([1, 2, 3, 4], [0.2, 0.5, 0.6])
  with pytest.raises(ValueError, match="flops"):
    an.fit_log_linear([0, 1, 2], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="non-finite"):
    an.pareto_frontier([1, np.nan], [0.1, 0.2])
  with pytest.raises(ValueError, match="positive"):
    an.fit_compute_optimal_allocation([1, 2, 3], [0, 1, 2], [0.1, 0.2, 0.3], [1, 2, 3])
