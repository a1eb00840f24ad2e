//! WordCount over text files.
//!
//! **Tokenization rule.** Input is read as UTF-8 (invalid bytes become
//! U+FFFD). A word is a maximal run of Unicode alphanumeric characters
//! (`char::is_alphanumeric`: letters and digits of any script); every other
//! character (spaces, punctuation, apostrophes, hyphens, symbols,
//! U+FFFD) separates words. Words are lowercased with Unicode's
//! `to_lowercase`. So `Don't stop-2-stop!` counts `don`, `t`, `stop` (twice)
//! and `2`.
//!
//! Files are cut into splits of about `split_size` bytes at line boundaries;
//! each split is a map task that counts its words (a map-side combine) and
//! sends `(word, count)` to partition `fnv1a64(word) % partitions`. Reducers
//! sum the counts and write `word<TAB>count` lines, sorted by word, to
//! `part-NNNNN` files.

mod plan;
pub use plan::{build, count_in_memory, job, WordcountParams};

/// Calls `each` with every word of `text`, lowercased (see the module docs).
pub fn for_each_word(text: &str, mut each: impl FnMut(&str)) {
    let mut word = String::new();
    for piece in text.split(|c: char| !c.is_alphanumeric()) {
        if piece.is_empty() {
            continue;
        }
        if piece.chars().all(|c| !c.is_uppercase()) {
            each(piece);
        } else {
            word.clear();
            word.extend(piece.chars().flat_map(char::to_lowercase));
            each(&word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn tokenization_follows_the_documented_rule() {
        assert_eq!(words("Don't stop-2-stop!"), ["don", "t", "stop", "2", "stop"]);
        assert_eq!(words("  ÉCOLE école\tStraße "), ["école", "école", "straße"]);
        assert_eq!(words("a\u{FFFD}b…c"), ["a", "b", "c"]);
        assert!(words(" \n--\n").is_empty());
    }
}
