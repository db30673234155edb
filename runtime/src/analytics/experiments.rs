//! Experiment statistics: each arm's rate with a 95 % Wilson interval, the Bayesian
//! probability that it beats the control (uniform Beta priors, exact Beta-Binomial sum), and
//! a sequential test whose error rate holds however often someone looks: the mixture
//! sequential probability ratio test (mSPRT) on the difference of two proportions, whose
//! `1/Λ` is an always-valid p-value (Johari, Pekelis, Walsh: "Always valid inference",
//! the method behind Optimizely's Stats Engine).
//!
//! The distributions come from `statrs`; the formulas are checked against reference values
//! computed with SciPy (`runtime/tests/reference/experiments.py`).

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::ln_beta;

/// Significance level of the sequential test unless a caller says otherwise.
pub const ALPHA: f64 = 0.05;
/// The mixing distribution's standard deviation of the mSPRT (an absolute difference in
/// rates): the effect size the test is most sensitive to.
pub const TAU: f64 = 0.05;
/// No decision before every arm has this many messages sent (the normal approximation the
/// test uses needs a sample).
pub const MIN_SENT: u64 = 100;

/// One arm's observations: messages sent and how many reached the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmData {
    /// The arm.
    pub arm: String,
    /// Messages sent.
    pub sent: u64,
    /// Of those, how many reached the metric.
    pub reached: u64,
}

/// One arm's statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmStats {
    /// The arm.
    pub arm: String,
    /// Messages sent.
    pub sent: u64,
    /// Of those, how many reached the metric.
    pub reached: u64,
    /// `reached / sent`.
    pub rate: f64,
    /// 95 % Wilson score interval of the rate.
    pub interval: [f64; 2],
    /// Posterior probability that this arm's rate is higher than the control's (uniform
    /// priors); `None` for the control itself.
    pub probability_to_beat_control: Option<f64>,
    /// The difference of rates to the control (this arm minus the control).
    pub difference: Option<f64>,
    /// Always-valid p-value of the difference to the control (mSPRT).
    pub p_value: Option<f64>,
}

/// An experiment's analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// The control arm.
    pub control: String,
    /// The significance level.
    pub alpha: f64,
    /// Each arm, the control first.
    pub arms: Vec<ArmStats>,
    /// The arm the sequential test picks: the best rate, its difference to every other arm
    /// significant at `alpha` (Bonferroni over the others); `None` while undecided.
    pub winner: Option<String>,
}

/// The 95 % Wilson score interval of `x` successes in `n` trials.
pub fn wilson(x: u64, n: u64) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let x = x.min(n);
    let z = Normal::standard().inverse_cdf(0.975);
    let (n, p) = (n as f64, x as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// P(p_b > p_a) for p_a ~ Beta(1 + xa, 1 + na - xa) and p_b ~ Beta(1 + xb, 1 + nb - xb):
/// the exact finite sum over the integer first parameter of b's posterior.
pub fn probability_b_beats_a(xa: u64, na: u64, xb: u64, nb: u64) -> f64 {
    let (xa, xb) = (xa.min(na), xb.min(nb));
    // The sum has a term per success of b: with fewer successes on a's side, sum over those
    // (P(b > a) = 1 - P(a > b); ties have no mass).
    if xa < xb {
        return (1.0 - beta_sum(xb, nb, xa, na)).clamp(0.0, 1.0);
    }
    beta_sum(xa, na, xb, nb)
}

/// The finite sum behind [`probability_b_beats_a`], over b's successes.
fn beta_sum(xa: u64, na: u64, xb: u64, nb: u64) -> f64 {
    let (aa, ba) = (1.0 + xa as f64, 1.0 + na.saturating_sub(xa) as f64);
    let (ab, bb) = (1.0 + xb as f64, 1.0 + nb.saturating_sub(xb) as f64);
    let base = ln_beta(aa, ba);
    let mut total = 0.0;
    for i in 0..(1 + xb) {
        let i = i as f64;
        total += (ln_beta(aa + i, ba + bb) - (bb + i).ln() - ln_beta(1.0 + i, bb) - base).exp();
    }
    debug_assert!(ab >= 1.0);
    total.clamp(0.0, 1.0)
}

/// The always-valid p-value of the difference between two rates: `1/Λ` of the mSPRT with a
/// normal mixture of standard deviation `tau` over the difference, capped at 1.
pub fn sequential_p_value(xa: u64, na: u64, xb: u64, nb: u64, tau: f64) -> f64 {
    if na == 0 || nb == 0 {
        return 1.0;
    }
    let (pa, pb) = (xa as f64 / na as f64, xb as f64 / nb as f64);
    let v = pa * (1.0 - pa) / na as f64 + pb * (1.0 - pb) / nb as f64;
    if v <= 0.0 {
        return 1.0;
    }
    let t2 = tau * tau;
    let theta = pb - pa;
    let ln_lambda = 0.5 * (v / (v + t2)).ln() + theta * theta * t2 / (2.0 * v * (v + t2));
    (-ln_lambda).exp().min(1.0)
}

/// Analyse an experiment's arms against `control` (the first arm when it is not one of them),
/// looking once, at these numbers.
pub fn analyse(arms: &[ArmData], control: &str, alpha: f64) -> Analysis {
    analyse_looks(std::slice::from_ref(&arms.to_vec()), control, alpha)
}

/// Analyse an experiment looked at several times, oldest look first, the last the current
/// numbers: rates, intervals and probabilities from the last; each arm's p-value the least
/// over the looks (an always-valid p-value never rises again: the test's error rate holds
/// at every look, so the smallest is as valid as any); the winner the first look's that
/// decides (the sequential test stops there, and later looks do not take it back).
pub fn analyse_looks(looks: &[Vec<ArmData>], control: &str, alpha: f64) -> Analysis {
    let arms: &[ArmData] = looks.last().map_or(&[], Vec::as_slice);
    let control = arms
        .iter()
        .find(|a| a.arm == control)
        .or_else(|| arms.first())
        .map(|a| a.arm.clone())
        .unwrap_or_default();
    let ctl = arms.iter().find(|a| a.arm == control);
    let mut ordered: Vec<&ArmData> = arms.iter().filter(|a| a.arm == control).collect();
    ordered.extend(arms.iter().filter(|a| a.arm != control));
    let rate = |a: &ArmData| {
        if a.sent == 0 {
            0.0
        } else {
            a.reached as f64 / a.sent as f64
        }
    };
    let stats = ordered
        .iter()
        .map(|a| {
            let vs = ctl.filter(|c| c.arm != a.arm);
            ArmStats {
                arm: a.arm.clone(),
                sent: a.sent,
                reached: a.reached,
                rate: rate(a),
                interval: wilson(a.reached, a.sent),
                probability_to_beat_control: vs
                    .map(|c| probability_b_beats_a(c.reached, c.sent, a.reached, a.sent)),
                difference: vs.map(|c| rate(a) - rate(c)),
                p_value: vs.map(|c| least_p_value(looks, &c.arm, &a.arm)),
            }
        })
        .collect();
    let winner = looks.iter().find_map(|look| decide(look, alpha));
    Analysis {
        control,
        alpha,
        arms: stats,
        winner,
    }
}

/// The least always-valid p-value of `arm` against `control` over the looks where both had
/// at least [`MIN_SENT`] messages (the test's normal approximation needs them, as its
/// decisions do), and the current one (the last look) whatever its size.
fn least_p_value(looks: &[Vec<ArmData>], control: &str, arm: &str) -> f64 {
    let last = looks.len().saturating_sub(1);
    looks
        .iter()
        .enumerate()
        .filter_map(|(i, look)| {
            let c = look.iter().find(|a| a.arm == control)?;
            let a = look.iter().find(|x| x.arm == arm)?;
            (i == last || (c.sent >= MIN_SENT && a.sent >= MIN_SENT))
                .then(|| sequential_p_value(c.reached, c.sent, a.reached, a.sent, TAU))
        })
        .fold(1.0, f64::min)
}

/// The arm with the best rate once its difference to every other arm is significant
/// (always-valid p-value at most `alpha / (arms - 1)`), each arm with at least
/// [`MIN_SENT`] messages sent.
pub fn decide(arms: &[ArmData], alpha: f64) -> Option<String> {
    if arms.len() < 2 || arms.iter().any(|a| a.sent < MIN_SENT) {
        return None;
    }
    let rate = |a: &ArmData| a.reached as f64 / a.sent as f64;
    let best = arms.iter().fold(None::<&ArmData>, |b, a| match b {
        Some(b) if rate(b) >= rate(a) => Some(b),
        _ => Some(a),
    })?;
    let level = alpha / (arms.len() - 1) as f64;
    arms.iter()
        .filter(|a| a.arm != best.arm)
        .all(|a| sequential_p_value(a.reached, a.sent, best.reached, best.sent, TAU) <= level)
        .then(|| best.arm.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn intervals_probabilities_and_p_values_match_the_scipy_reference() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/reference/experiments.json"))
                .expect("reference values");
        for case in reference["cases"].as_array().unwrap() {
            let n = |k: &str| case[k].as_u64().unwrap();
            let (xa, na, xb, nb) = (n("xa"), n("na"), n("xb"), n("nb"));
            let f = |k: &str| case[k].as_f64().unwrap();
            let [lo, hi] = wilson(xb, nb);
            assert!(close(lo, f("wilson_b_low"), 1e-9), "{case}: {lo}");
            assert!(close(hi, f("wilson_b_high"), 1e-9), "{case}: {hi}");
            let p = probability_b_beats_a(xa, na, xb, nb);
            assert!(close(p, f("prob_b_beats_a"), 1e-6), "{case}: {p}");
            let pv = sequential_p_value(xa, na, xb, nb, TAU);
            assert!(
                close(pv, f("msprt_p_value"), 1e-9 + 1e-9 * pv),
                "{case}: {pv}"
            );
        }
    }

    /// Arms observed one message at a time, looked at every `every` messages per arm up to
    /// `max` each: whether the test ever declared a winner, and which.
    fn sequence(
        rng: &mut rand::rngs::StdRng,
        pa: f64,
        pb: f64,
        max: u64,
        every: u64,
    ) -> Option<String> {
        let (mut xa, mut xb) = (0, 0);
        for n in 1..=max {
            xa += u64::from(rng.gen_bool(pa));
            xb += u64::from(rng.gen_bool(pb));
            if n % every == 0 {
                let arms = [
                    ArmData {
                        arm: "a".into(),
                        sent: n,
                        reached: xa,
                    },
                    ArmData {
                        arm: "b".into(),
                        sent: n,
                        reached: xb,
                    },
                ];
                if let Some(w) = decide(&arms, ALPHA) {
                    return Some(w);
                }
            }
        }
        None
    }

    #[test]
    fn looking_after_every_fifty_messages_picks_a_false_winner_at_most_alpha_of_the_time() {
        // 1,000 seeded A/A experiments (both arms at 10 %), looked at 60 times each.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let runs = 1000;
        let false_winners = (0..runs)
            .filter(|_| sequence(&mut rng, 0.10, 0.10, 3000, 50).is_some())
            .count();
        let rate = false_winners as f64 / runs as f64;
        let se = (ALPHA * (1.0 - ALPHA) / runs as f64).sqrt();
        eprintln!("A/A false decisions: {rate}");
        assert!(
            rate <= ALPHA + 3.0 * se,
            "false decisions {rate} > {ALPHA} + 3 SE"
        );
    }

    #[test]
    fn at_a_click_rate_of_two_percent_false_winners_stay_within_alpha_too() {
        // Where click rates are, the plug-in variance is least stable: 1,000 A/A sequences at
        // 2 %, looked at every 100 messages per arm up to 5,000.
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let runs = 1000;
        let false_winners = (0..runs)
            .filter(|_| sequence(&mut rng, 0.02, 0.02, 5000, 100).is_some())
            .count();
        let rate = false_winners as f64 / runs as f64;
        eprintln!("A/A at 2 %: false decisions {rate}");
        let se = (ALPHA * (1.0 - ALPHA) / runs as f64).sqrt();
        assert!(
            rate <= ALPHA + 3.0 * se,
            "false decisions {rate} > {ALPHA} + 3 SE"
        );
    }

    #[test]
    fn a_clear_difference_is_found_nine_times_in_ten() {
        // 10 % against 14 %, at most 3,000 messages per arm, looked at every 50.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let runs = 500;
        let found = (0..runs)
            .filter(|_| sequence(&mut rng, 0.10, 0.14, 3000, 50).as_deref() == Some("b"))
            .count();
        let power = found as f64 / runs as f64;
        eprintln!("power: {power}");
        assert!(power >= 0.9, "power {power} < 0.9");
    }

    #[test]
    fn a_difference_significant_at_an_earlier_look_keeps_its_p_value_and_its_winner() {
        let look = |na: u64, xa: u64, nb: u64, xb: u64| {
            vec![
                ArmData {
                    arm: "a".into(),
                    sent: na,
                    reached: xa,
                },
                ArmData {
                    arm: "b".into(),
                    sent: nb,
                    reached: xb,
                },
            ]
        };
        // Clearly apart after 300 messages each, then alike after many more.
        let early = look(300, 30, 300, 90);
        let now = look(5000, 1000, 5000, 1010);
        let at_early = sequential_p_value(30, 300, 90, 300, TAU);
        let at_now = sequential_p_value(1000, 5000, 1010, 5000, TAU);
        assert!(at_early < 0.001 && at_now > 0.5, "{at_early} {at_now}");
        // Looked at only now, nothing is significant.
        let once = analyse(&now, "a", ALPHA);
        assert_eq!(once.winner, None);
        assert_eq!(once.arms[1].p_value, Some(at_now));
        // Looked at along the way, the test stopped early and its p-value does not rise; a
        // look too small for the test (nineteen of b's first twenty messages reached it, one of a's)
        // does not count.
        let tiny = look(20, 1, 20, 19);
        assert!(sequential_p_value(1, 20, 19, 20, TAU) < at_early);
        let looks = [tiny, look(50, 5, 50, 9), early, now];
        let seq = analyse_looks(&looks, "a", ALPHA);
        assert_eq!(seq.winner.as_deref(), Some("b"));
        assert_eq!(seq.arms[1].p_value, Some(at_early));
        // Rates and intervals are the current numbers'.
        assert_eq!(seq.arms[1].sent, 5000);
        assert_eq!(seq.arms[1].rate, once.arms[1].rate);
        assert_eq!(seq.arms[1].interval, once.arms[1].interval);
    }

    #[test]
    fn the_control_comes_first_and_compares_with_itself_to_nothing() {
        let arms = [
            ArmData {
                arm: "b".into(),
                sent: 200,
                reached: 40,
            },
            ArmData {
                arm: "a".into(),
                sent: 200,
                reached: 20,
            },
        ];
        let a = analyse(&arms, "a", ALPHA);
        assert_eq!(a.arms[0].arm, "a");
        assert_eq!(a.arms[0].probability_to_beat_control, None);
        assert!(a.arms[1].probability_to_beat_control.unwrap() > 0.99);
        assert!(close(a.arms[1].difference.unwrap(), 0.1, 1e-12));
        let empty = analyse(
            &[ArmData {
                arm: "a".into(),
                sent: 0,
                reached: 0,
            }],
            "a",
            ALPHA,
        );
        assert_eq!(empty.arms[0].interval, [0.0, 1.0]);
        assert_eq!(empty.winner, None);
    }
}
