//! A/B arm assignment (SPEC section 5): a deterministic hash of the campaign
//! name and the contact's external id, so a contact keeps their arm across
//! runs and anyone can recompute it.

use sha2::{Digest, Sha256};

/// Name used for the global holdout's hash.
pub const GLOBAL_HOLDOUT_NAME: &str = "__global__";

/// `u` in [0, 1): the first 8 bytes (big-endian) of SHA-256(name, 0x00, external_id) over 2^64.
pub fn unit_hash(campaign: &str, external_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(campaign.as_bytes());
    h.update([0u8]);
    h.update(external_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // u64 -> f64 rounds to 53 bits; dividing by 2^64 stays below 1 except for
    // the last 2^10 values, which round to 1.0; clamp so `u < 1` always holds.
    let u = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
    u.min(1.0 - f64::EPSILON)
}

/// The arm a contact falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The control group: measured, never sent.
    Holdout,
    /// Variant number `i`, in file order.
    Variant(usize),
}

/// The arms of one campaign: a holdout fraction and variant weights in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Arms {
    holdout: f64,
    cumulative: Vec<f64>,
}

impl Arms {
    /// Arms for `holdout` in [0, 1) and positive `weights` (at least one).
    pub fn new(holdout: f64, weights: &[f64]) -> Result<Self, String> {
        if !(0.0..1.0).contains(&holdout) {
            return Err(format!(
                "holdout must be at least 0 and below 1, not {holdout}"
            ));
        }
        if weights.is_empty() {
            return Err("a campaign needs at least one variant".into());
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err("variant weights must be positive numbers".into());
        }
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Ok(Self {
            holdout,
            cumulative,
        })
    }

    /// The arm of the contact whose unit hash is `u`.
    pub fn pick(&self, u: f64) -> Arm {
        if u < self.holdout {
            return Arm::Holdout;
        }
        let v = (u - self.holdout) / (1.0 - self.holdout);
        let last = self.cumulative.len() - 1;
        let i = self.cumulative.iter().position(|c| v < *c).unwrap_or(last);
        Arm::Variant(i)
    }

    /// The arm of `external_id` in `campaign`.
    pub fn assign(&self, campaign: &str, external_id: &str) -> Arm {
        self.pick(unit_hash(campaign, external_id))
    }
}

/// Whether `external_id` is in the global holdout of fraction `fraction`.
pub fn in_global_holdout(fraction: f64, external_id: &str) -> bool {
    fraction > 0.0 && unit_hash(GLOBAL_HOLDOUT_NAME, external_id) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values computed independently:
    /// `printf 'winback-q4\x00c-1' | sha256sum` and its first 16 hex digits / 2^64.
    #[test]
    fn unit_hash_matches_the_spec_formula() {
        let cases = [
            ("winback-q4", "c-1", 0xf83a_d393_7bfb_e3ee_u64),
            ("__global__", "42", 0xf61f_93dc_370b_039a_u64),
        ];
        for (name, id, first8) in cases {
            let expected = first8 as f64 / 2f64.powi(64);
            assert!(
                (unit_hash(name, id) - expected).abs() < 1e-15,
                "{name}/{id}: {} vs {expected}",
                unit_hash(name, id)
            );
        }
    }

    #[test]
    fn holdout_then_variants_by_cumulative_weight() {
        let arms = Arms::new(0.1, &[1.0, 1.0]).unwrap();
        assert_eq!(arms.pick(0.0), Arm::Holdout);
        assert_eq!(arms.pick(0.099_999), Arm::Holdout);
        assert_eq!(arms.pick(0.1), Arm::Variant(0));
        assert_eq!(arms.pick(0.549_999), Arm::Variant(0));
        assert_eq!(arms.pick(0.55), Arm::Variant(1));
        assert_eq!(arms.pick(0.999_999), Arm::Variant(1));
        let uneven = Arms::new(0.0, &[3.0, 1.0]).unwrap();
        assert_eq!(uneven.pick(0.74), Arm::Variant(0));
        assert_eq!(uneven.pick(0.76), Arm::Variant(1));
    }

    #[test]
    fn shares_follow_the_weights() {
        let arms = Arms::new(0.1, &[2.0, 1.0]).unwrap();
        let mut counts = [0usize; 3];
        let n = 60_000;
        for i in 0..n {
            match arms.assign("split", &format!("user-{i}")) {
                Arm::Holdout => counts[0] += 1,
                Arm::Variant(v) => counts[v + 1] += 1,
            }
        }
        let share = |c: usize| c as f64 / n as f64;
        assert!((share(counts[0]) - 0.10).abs() < 0.01, "{counts:?}");
        assert!((share(counts[1]) - 0.60).abs() < 0.01, "{counts:?}");
        assert!((share(counts[2]) - 0.30).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn rejects_bad_arms() {
        assert!(Arms::new(1.0, &[1.0]).is_err());
        assert!(Arms::new(0.1, &[]).is_err());
        assert!(Arms::new(0.1, &[1.0, 0.0]).is_err());
    }
}
