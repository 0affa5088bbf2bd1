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


# ------------------------- standard errors and ties -------------------------


def test_standard_error_is_the_binomial_se_for_0_1_outcomes():
  x = np.array([1, 0, 0, 1, 1, 1, 0, 1, 0, 1], float)
  p, n = x.mean(), x.size
  assert an.standard_error(x) == pytest.approx(np.sqrt(p * (1 - p) / (n - 1)))
  assert np.isnan(an.standard_error([0.5]))
  a, b = np.array([1.0, 0, 1, 1]), np.array([0.0, 0, 1, 0])
  assert an.difference_se(a, b) == pytest.approx(np.std(a - b, ddof=1) / 2)


def test_log_linear_fit_standard_errors_match_closed_forms():
  flops = np.array([1e12, 1e13, 1e14, 1e15, 1e16])
  y = np.array([0.30, 0.36, 0.37, 0.45, 0.47])
  x = np.log10(flops)
  fit = an.fit_log_linear(flops, y)
  resid = y - fit.predict(x)
  s2 = resid @ resid / (len(x) - 2)
  sxx = ((x - x.mean()) ** 2).sum()
  assert fit.slope_se == pytest.approx(np.sqrt(s2 / sxx))
  assert fit.intercept_se == pytest.approx(np.sqrt(s2 * (1 / 5 + x.mean() ** 2 / sxx)))
  # weighted: numpy's polyfit with w = 1 / se and the unscaled covariance,
  # inflated by the reduced chi^2 when it exceeds 1
  se = np.array([0.01, 0.02, 0.01, 0.03, 0.02])
  wfit = an.fit_log_linear(flops, y, se)
  (slope, icpt), cov = np.polyfit(x, y, 1, w=1 / se, cov="unscaled")
  chi2 = (((y - slope * x - icpt) / se) ** 2).sum() / 3
  assert wfit.slope == pytest.approx(slope) and wfit.intercept == pytest.approx(icpt)
  assert wfit.slope_se == pytest.approx(np.sqrt(cov[0, 0] * max(1.0, chi2)))
  assert np.isnan(an.fit_log_linear(flops[:2], y[:2]).slope_se)
  with pytest.raises(ValueError, match="se must be > 0"):
    an.fit_log_linear(flops, y, np.zeros(5))


def test_power_law_fit_reports_finite_uncertainties():
  rng = np.random.default_rng(4)
  ks = np.geomspace(1, 256, 9)
  cov = np.exp(-1.2 * ks**-0.4) * (1 + 0.01 * rng.standard_normal(ks.size))
  fit = an.fit_coverage_power_law(ks, np.clip(cov, 1e-6, 1))
  assert 0 < fit.a_se < 0.2 and 0 < fit.b_se < 0.2
  assert abs(fit.b + 0.4) < 4 * fit.b_se + 0.02


def test_compute_optimal_ties_within_paired_error():
  rng = np.random.default_rng(5)
  P = 400
  base = (rng.random(P) < 0.5).astype(float)
  near = base.copy()
  near[rng.choice(P, 4, replace=False)] = 1 - near[rng.choice(P, 4, replace=False)]
  far = (rng.random(P) < 0.2).astype(float)
  results = {
    "a": (np.array([1.0, 10.0]), np.array([0.1, base.mean()])),
    "b": (np.array([9.0]), np.array([near.mean()])),
    "c": (np.array([5.0]), np.array([far.mean()])),
  }
  per = {"a": [np.zeros(P), base], "b": [near], "c": [far]}
  per["a"][0][: int(0.1 * P)] = 1
  ch = an.compute_optimal_with_ties([2.0, 20.0], results, per)
  assert ch.methods == ["a", max(("a", "b"), key=lambda m: results[m][1][-1])]
  assert ch.tied[0] == ["a"]  # only a fits the first budget
  # at 20: a and b differ on 4 problems (paired SE ~0.007): a tie; c is far
  assert sorted(ch.tied[1]) == ["a", "b"]
  assert ch.se[1] == pytest.approx(an.standard_error(per[ch.methods[1]][-1]))


# ------------------------------- plot specs -------------------------------


def test_method_styles_never_share_a_colour():
  from experiments import plots

  methods = list(plots.KNOWN_METHODS) + ["extra_1", "extra_2"]
  st = plots.method_styles(methods)
  colours = [s["colour"] for s in st.values()]
  assert len(set(colours)) == len(colours) == len(methods)
  assert len(set(plots.PALETTE)) == len(plots.PALETTE)
  # a method keeps its colour whichever subset is drawn
  assert plots.method_styles(["astar", "pf"])["pf"] == st["pf"]
  with pytest.raises(ValueError, match="distinct colours"):
    plots.method_styles([f"m{i}" for i in range(30)])


def _panels():
  f = np.array([1e8, 2e8, 4e8])
  s = {
    m: (f, np.array([0.3, 0.4, 0.5]), np.full(3, 0.05))
    for m in ("majority", "bon_prm_min", "pf", "beam", "astar")
  }
  return {
    v: {
      "auroc": a,
      "series": dict(s),
      "coverage": (f, [0.4, 0.6, 0.8]),
      "greedy": 0.42,
      "pass1": 0.31,
    }
    for v, a in (("oracle", 0.84), ("flip0.1", 0.7), ("learned", 0.54))
  }


def test_verifier_panel_spec_colours_labels_and_reference_lines(tmp_path):
  from experiments import plots

  spec = plots.verifier_panels_spec(_panels())
  assert [p["verifier"] for p in spec["panels"]] == ["oracle", "flip0.1", "learned"]
  assert "log" in spec["xlabel"] and "FLOPs" in spec["xlabel"]
  assert spec["legend"] == "outside right"
  seen = {}
  for panel in spec["panels"]:
    colours = [s["colour"] for s in panel["series"]]
    assert len(set(colours)) == len(colours)  # no colour shared in a panel
    for s in panel["series"]:
      assert seen.setdefault(s["method"], (s["colour"], s["marker"])) == (
        s["colour"],
        s["marker"],
      )  # and a method keeps it across panels
    assert panel["upper_bound"] is not None
    assert {h["label"] for h in panel["hlines"]} == {"greedy (T=0)", "pass@1"}
    assert "AUROC" in panel["title"]
  owners = {}
  for m, (c, _) in seen.items():
    assert owners.setdefault(c, m) == m  # no colour for two methods anywhere
  path = plots.render_verifier_panels(spec, str(tmp_path / "panels.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pts = {"pf": [(0.84, 0.7, 0.05), (0.54, 0.3, 0.05)], "bon_orm": [(1.0, 0.8, 0.04)]}
  aspec = plots.auroc_summary_spec(pts, 16)
  assert [s["x"] for s in aspec["series"] if s["method"] == "pf"] == [[0.54, 0.84]]
  cols = [s["colour"] for s in aspec["series"]]
  assert len(set(cols)) == len(cols)
  assert plots.render_auroc_summary(aspec, str(tmp_path / "auroc.png")).endswith(".png")
