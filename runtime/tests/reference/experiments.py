"""Reference values for Herald's experiment statistics, computed with SciPy.

Run with SciPy installed (`pip install scipy`):

    python3 runtime/tests/reference/experiments.py > runtime/tests/reference/experiments.json

The Rust tests (`runtime/src/analytics/experiments.rs`) compare their results with these.
Herald sums a closed form for the probability to beat; here it is integrated numerically, an
independent method.
"""

import json
import math

from scipy import integrate, stats

TAU = 0.05

CASES = [
    # (control successes, control trials, arm successes, arm trials)
    (20, 200, 40, 200),
    (100, 1000, 120, 1000),
    (5, 60, 9, 55),
    (0, 50, 3, 50),
    (300, 3000, 360, 3000),
    (48, 480, 45, 470),
    (1234, 10000, 1301, 10000),
]


def wilson(x, n):
    z = stats.norm.ppf(0.975)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def prob_b_beats_a(xa, na, xb, nb):
    a = stats.beta(1 + xa, 1 + na - xa)
    b = stats.beta(1 + xb, 1 + nb - xb)
    # Split the integral where the posteriors' mass is, so quad does not miss a narrow peak.
    lo = max(0.0, min(a.ppf(1e-12), b.ppf(1e-12)))
    hi = min(1.0, max(a.ppf(1 - 1e-12), b.ppf(1 - 1e-12)))
    points = sorted({a.mean(), b.mean()})
    value, _ = integrate.quad(
        lambda t: b.pdf(t) * a.cdf(t), lo, hi, points=points, limit=500, epsabs=1e-12, epsrel=1e-10
    )
    # Below lo the integrand is ~0; above hi, P(b > a) gains b's tail with a.cdf ~ 1.
    return value + b.sf(hi)


def msprt_p_value(xa, na, xb, nb):
    pa, pb = xa / na, xb / nb
    v = pa * (1 - pa) / na + pb * (1 - pb) / nb
    if v <= 0:
        return 1.0
    t2 = TAU * TAU
    theta = pb - pa
    ln_lambda = 0.5 * math.log(v / (v + t2)) + theta * theta * t2 / (2 * v * (v + t2))
    return min(1.0, math.exp(-ln_lambda))


def main():
    cases = []
    for xa, na, xb, nb in CASES:
        lo, hi = wilson(xb, nb)
        cases.append(
            {
                "xa": xa,
                "na": na,
                "xb": xb,
                "nb": nb,
                "wilson_b_low": lo,
                "wilson_b_high": hi,
                "prob_b_beats_a": prob_b_beats_a(xa, na, xb, nb),
                "msprt_p_value": msprt_p_value(xa, na, xb, nb),
            }
        )
    print(json.dumps({"tau": TAU, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
