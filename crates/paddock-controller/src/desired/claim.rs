//! Which pool sandboxes a claim tries, in order.

/// A pool sandbox as the claim sees it.
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    pub name: String,
    /// Still owned by the SandboxSet (not claimed by someone else meanwhile).
    pub pooled: bool,
    pub available: bool,
    pub has_ip: bool,
    pub locked: bool,
    pub revision: Option<String>,
}

/// Indices of claimable candidates: current revision first, each group rotated by a start
/// point derived from `seed`, so concurrent claims tend to try different sandboxes first.
pub fn pick(candidates: &[Candidate], update_revision: Option<&str>, seed: &str) -> Vec<usize> {
    let ok: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            c.pooled && c.available && c.has_ip && !c.locked
        })
        .collect();
    let (mut current, mut old): (Vec<usize>, Vec<usize>) = ok.into_iter().partition(|&i| {
        update_revision.is_some() && candidates[i].revision.as_deref() == update_revision
    });
    let start = seed.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    for group in [&mut current, &mut old] {
        if !group.is_empty() {
            let k = start % group.len();
            group.rotate_left(k);
        }
    }
    current.extend(old);
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, rev: &str) -> Candidate {
        Candidate {
            name: name.into(),
            pooled: true,
            available: true,
            has_ip: true,
            locked: false,
            revision: Some(rev.into()),
        }
    }

    #[test]
    fn only_available_unlocked_pooled_sandboxes_with_an_ip() {
        let mut all = vec![
            c("a", "r"),
            c("b", "r"),
            c("c", "r"),
            c("d", "r"),
            c("e", "r"),
        ];
        all[0].available = false;
        all[1].locked = true;
        all[2].pooled = false;
        all[3].has_ip = false;
        assert_eq!(pick(&all, Some("r"), "x"), vec![4]);
    }

    #[test]
    fn current_revision_comes_first() {
        let all = vec![c("old", "r1"), c("new", "r2")];
        assert_eq!(pick(&all, Some("r2"), "seed"), vec![1, 0]);
    }

    #[test]
    fn different_seeds_start_at_different_places() {
        let all: Vec<Candidate> = (0..7).map(|i| c(&format!("s{i}"), "r")).collect();
        let firsts: std::collections::BTreeSet<usize> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| pick(&all, Some("r"), s)[0])
            .collect();
        assert!(firsts.len() > 1);
        assert_eq!(pick(&all, Some("r"), "a").len(), 7);
    }
}
