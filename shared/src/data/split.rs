//! Deterministic, label-stratified splits (so a small cohort's validation and
//! labelled subsets keep both classes).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Splits `items` into (rest, taken) where `taken` holds `fraction` of each
/// label group (rounded, at least one per group when `fraction > 0` and the group
/// has two or more members). Unlabelled items always stay in `rest`.
pub fn stratified_split<T>(
    items: Vec<T>,
    label: impl Fn(&T) -> Option<bool>,
    fraction: f64,
    seed: u64,
) -> (Vec<T>, Vec<T>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut groups: [Vec<T>; 2] = [Vec::new(), Vec::new()];
    let mut rest = Vec::new();
    for item in items {
        match label(&item) {
            Some(l) => groups[usize::from(l)].push(item),
            None => rest.push(item),
        }
    }
    let mut taken = Vec::new();
    for mut group in groups {
        group.shuffle(&mut rng);
        let n = group.len();
        let mut k = (fraction.clamp(0.0, 1.0) * n as f64).round() as usize;
        if fraction > 0.0 && k == 0 && n >= 2 {
            k = 1;
        }
        let tail = group.split_off(n - k);
        taken.extend(tail);
        rest.extend(group);
    }
    (rest, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_class_balance_and_loses_nothing() {
        let items: Vec<(usize, Option<bool>)> = (0..100)
            .map(|i| (i, if i % 10 == 0 { None } else { Some(i % 3 == 0) }))
            .collect();
        let (rest, taken) = stratified_split(items.clone(), |x| x.1, 0.2, 4);
        assert_eq!(rest.len() + taken.len(), 100);
        let pos = |v: &[(usize, Option<bool>)]| v.iter().filter(|x| x.1 == Some(true)).count();
        assert_eq!(pos(&taken), 6); // 30 positives × 0.2
        assert!(taken.iter().all(|x| x.1.is_some()));
        let (rest2, taken2) = stratified_split(items, |x| x.1, 0.2, 4);
        assert_eq!(taken, taken2);
        assert_eq!(rest, rest2);
    }
}
