//! "Did you mean …?": the known word closest to a misspelt one, for messages about unknown
//! fields, keys and step ids.

/// The candidate closest to `word`, if one is close enough to be a likely typo of it: at most two
/// edits (one for words of up to four characters), a swap of neighbours counting as one.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` for the closest candidate, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Edit distance with adjacent transpositions (optimal string alignment), case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_field_a_typo_was_meant_to_be() {
        let fields = [
            "step_id",
            "action",
            "agent_type",
            "params",
            "depends_on",
            "retry",
        ];
        assert_eq!(closest("agent_typ", fields), Some("agent_type"));
        assert_eq!(closest("parms", fields), Some("params"));
        assert_eq!(closest("dependson", fields), Some("depends_on"));
        assert_eq!(closest("stpe_id", fields), Some("step_id"));
        assert_eq!(closest("colour", fields), None);
        assert_eq!(
            closest("executer", ["executor", "command"]),
            Some("executor")
        );
        assert_eq!(closest("stpe_1", ["step_1", "step_2"]), Some("step_1"));
        assert_eq!(did_you_mean("x", ["y"]), "; did you mean `y`?");
        assert_eq!(did_you_mean("zzzz", ["step_1"]), "");
    }
}
