//! A/B variants: the arm a contact gets, stable per contact and weighted.

#[allow(unused_imports)]
use super::*;

/// A contact's stable point for `key` (an experiment, a broadcast's test, a holdout): the
/// same contact and key always give the same number.
pub fn stable_point(contact: &str, key: &str) -> u64 {
    let digest = Sha256::digest(format!("{contact}\u{1f}{key}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Deterministic arm choice: the same contact always gets the same arm of an experiment.
pub fn pick_variant(contact: &str, experiment: &str, arms: &[(String, u32)]) -> String {
    let total: u64 = arms.iter().map(|(_, w)| *w as u64).sum();
    let mut point = stable_point(contact, experiment) % total.max(1);
    for (name, w) in arms {
        if point < *w as u64 {
            return name.clone();
        }
        point -= *w as u64;
    }
    arms.last().map(|(n, _)| n.clone()).unwrap_or_default()
}

impl Engine {
    /// A bandit's arm for a run (`bandit(name, arms, metric)`): the arm the contact was given
    /// in an earlier run of the workflow, else a Thompson draw — per arm a rate drawn from
    /// Beta(1 + reached, 1 + sent - reached) of the workflow's counters, the highest wins.
    pub(crate) fn bandit_arm(
        &self,
        run: &crate::model::Run,
        name: &str,
        arms: &[(String, u32)],
        metric: &str,
    ) -> Result<String, Interrupt> {
        let stored = |e: crate::store::StoreError| Interrupt::Fail(format!("storage failed: {e}"));
        // A contact keeps its arm, on re-entry too.
        for earlier in self.store.runs_of_contact(&run.contact).map_err(stored)? {
            if earlier.workflow != run.workflow || earlier.id == run.id {
                continue;
            }
            let journal = self.store.journal(&earlier.id).map_err(stored)?;
            if let Some(arm) = journal
                .iter()
                .find(|s| s.kind == "variant" && s.name == name && s.status == StepStatus::Done)
                .and_then(|s| s.result.as_str())
                .filter(|a| arms.iter().any(|(n, _)| n == a))
            {
                return Ok(arm.to_string());
            }
        }
        let eligible: Vec<&(String, u32)> = arms.iter().filter(|(_, w)| *w > 0).collect();
        let scoped: Vec<(String, String)> = eligible
            .iter()
            .map(|(a, _)| (a.clone(), format!("variant:{}:{name}:{a}", run.workflow)))
            .collect();
        let data = if self.store.notes_facts() {
            crate::analytics::arm_data(self.store.as_ref(), &scoped, metric).map_err(stored)?
        } else {
            Vec::new()
        };
        let mut rng = rand::thread_rng();
        let mut best: Option<(f64, String)> = None;
        for (arm, _) in &eligible {
            let (sent, reached) = data
                .iter()
                .find(|d| &d.arm == arm)
                .map_or((0, 0), |d| (d.sent, d.reached.min(d.sent)));
            let beta = rand_distr::Beta::new(1.0 + reached as f64, 1.0 + (sent - reached) as f64)
                .map_err(|e| Interrupt::Fail(format!("bandit: {e}")))?;
            let draw: f64 = rand_distr::Distribution::sample(&beta, &mut rng);
            if best.as_ref().is_none_or(|(b, _)| draw > *b) {
                best = Some((draw, arm.clone()));
            }
        }
        Ok(best.map(|(_, a)| a).unwrap_or_default())
    }
}
