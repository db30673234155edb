//! A/B variants: the arm a contact gets, stable per contact and weighted.

#[allow(unused_imports)]
use super::*;

/// Deterministic arm choice: the same contact always gets the same arm of an experiment.
pub fn pick_variant(contact: &str, experiment: &str, arms: &[(String, u32)]) -> String {
    let digest = Sha256::digest(format!("{contact}\u{1f}{experiment}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    let total: u64 = arms.iter().map(|(_, w)| *w as u64).sum();
    let mut point = u64::from_be_bytes(b) % total.max(1);
    for (name, w) in arms {
        if point < *w as u64 {
            return name.clone();
        }
        point -= *w as u64;
    }
    arms.last().map(|(n, _)| n.clone()).unwrap_or_default()
}
