//! Desired state as pure functions of observed state: no IO, no clock reads (the time is an
//! argument), so every decision the reconcilers take is unit-tested here.

pub mod checkpoint;
pub mod claim;
pub mod duration;
pub mod inject;
pub mod pool;
pub mod revision;
pub mod sandbox;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves an int-or-percent against `total`; percentages round up, as the original's
/// `maxUnavailable` does. Returns `None` for a malformed value.
pub fn scaled_value(v: &IntOrString, total: i32) -> Option<i32> {
    match v {
        IntOrString::Int(n) => (*n >= 0).then_some(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            if !(0..=100).contains(&pct) {
                return None;
            }
            let total = i64::from(total.max(0));
            i32::try_from((pct * total + 99) / 100).ok()
        }
    }
}

/// Why an int-or-percent is rejected; the messages are the webhook's denial text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntOrPercentError {
    /// A negative integer.
    #[error("must not be negative, got {0}")]
    Negative(i32),
    /// A string that is not a percentage in `0%..=100%`.
    #[error("must be a non-negative integer or a percentage between 0% and 100%, got {0:?}")]
    NotAPercentage(String),
}

/// Checks an int-or-percent as the validating webhook does.
pub fn validate_int_or_percent(v: &IntOrString) -> Result<(), IntOrPercentError> {
    match v {
        IntOrString::Int(n) if *n < 0 => Err(IntOrPercentError::Negative(*n)),
        IntOrString::Int(_) => Ok(()),
        IntOrString::String(s) => match s.strip_suffix('%').map(|p| p.parse::<i64>()) {
            Some(Ok(p)) if (0..=100).contains(&p) => Ok(()),
            _ => Err(IntOrPercentError::NotAPercentage(s.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&p("20%"), 5), Some(1));
        assert_eq!(scaled_value(&p("20%"), 6), Some(2));
        assert_eq!(scaled_value(&p("20%"), 1), Some(1));
        assert_eq!(scaled_value(&p("0%"), 10), Some(0));
        assert_eq!(scaled_value(&p("100%"), 7), Some(7));
        assert_eq!(scaled_value(&IntOrString::Int(3), 100), Some(3));
        assert_eq!(scaled_value(&p("120%"), 7), None);
        assert_eq!(scaled_value(&p("abc"), 7), None);
        assert!(validate_int_or_percent(&p("x%")).is_err());
        assert!(validate_int_or_percent(&IntOrString::Int(-1)).is_err());
        // The denial text the webhook answers with, word for word.
        assert_eq!(
            validate_int_or_percent(&IntOrString::Int(-1))
                .unwrap_err()
                .to_string(),
            "must not be negative, got -1"
        );
        assert_eq!(
            validate_int_or_percent(&p("x%")).unwrap_err().to_string(),
            "must be a non-negative integer or a percentage between 0% and 100%, got \"x%\""
        );
        assert!(validate_int_or_percent(&p("50%")).is_ok());
    }
}
