//! Query-side synonyms: groups of words and phrases that mean the same thing
//! to a support desk ("lost, stolen, misplaced"; "atm, cash machine"), so a
//! customer's wording finds a record written in the operator's. Applied to
//! the question only (the index holds the records' own words), so changing
//! the list needs no re-ingestion.

use std::collections::HashMap;

use super::analyze::Analyzer;

/// The list shipped with the server (`RETRIEVAL_SYNONYMS` unset).
pub const BUILT_IN: &str = include_str!("synonyms.txt");

/// Parsed groups, entries as terms.
#[derive(Debug, Default)]
pub struct Synonyms {
    /// Per group, its one-word entries (terms).
    words: Vec<Vec<String>>,
    /// One-word entry → the groups it is in.
    by_word: HashMap<String, Vec<usize>>,
    /// Several-word entries (terms in order) and their group.
    phrases: Vec<(Vec<String>, usize)>,
}

impl Synonyms {
    /// Parses the list format: one group per line, entries separated by
    /// commas, `#` starts a comment line, blank lines ignored. Entries that
    /// analyse to nothing are dropped, as are groups left with one entry.
    pub fn parse(text: &str, analyzer: &Analyzer) -> Self {
        let mut synonyms = Self::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entries: Vec<Vec<String>> = line
                .split(',')
                .map(|entry| {
                    Analyzer::words(entry)
                        .map(|word| analyzer.stem(&word))
                        .collect::<Vec<_>>()
                })
                .filter(|terms| !terms.is_empty())
                .collect();
            if entries.len() < 2 {
                continue;
            }
            let group = synonyms.words.len();
            let mut words = Vec::new();
            for terms in entries {
                if let [term] = terms.as_slice() {
                    if !words.contains(term) {
                        words.push(term.clone());
                        synonyms
                            .by_word
                            .entry(term.clone())
                            .or_default()
                            .push(group);
                    }
                } else {
                    synonyms.phrases.push((terms, group));
                }
            }
            synonyms.words.push(words);
        }
        synonyms
    }

    /// For each term of a question (all its terms, in order, stop words
    /// included so phrases match), the other terms that mean the same.
    pub fn expand(&self, terms: &[String]) -> Vec<Vec<String>> {
        let mut extra: Vec<Vec<String>> = vec![Vec::new(); terms.len()];
        let mut add = |at: usize, group: usize| {
            for word in &self.words[group] {
                if *word != terms[at] && !extra[at].contains(word) {
                    extra[at].push(word.clone());
                }
            }
        };
        for (at, term) in terms.iter().enumerate() {
            for group in self.by_word.get(term).into_iter().flatten() {
                add(at, *group);
            }
        }
        for (phrase, group) in &self.phrases {
            for start in 0..terms.len().saturating_sub(phrase.len() - 1) {
                if terms[start..start + phrase.len()] == phrase[..] {
                    for at in start..start + phrase.len() {
                        add(at, *group);
                    }
                }
            }
        }
        extra
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(analyzer: &Analyzer, text: &str) -> Vec<String> {
        Analyzer::words(text)
            .map(|word| analyzer.stem(&word))
            .collect()
    }

    #[test]
    fn words_and_phrases_of_a_group_find_its_words() {
        let analyzer = Analyzer::default();
        let synonyms = Synonyms::parse(
            "# comment\n\nlost, stolen, misplaced\natm, cash machine\nlonely\n, ,\n",
            &analyzer,
        );
        let question = terms(&analyzer, "my card was Stolen at the cash machine");
        let extra = synonyms.expand(&question);
        assert_eq!(extra[3], ["lost", "misplac"]);
        assert_eq!(extra[6], ["atm"]);
        assert_eq!(extra[7], ["atm"]);
        assert!(extra[1].is_empty() && extra[0].is_empty());
        // A group of one entry is no group.
        assert!(synonyms.expand(&terms(&analyzer, "lonely"))[0].is_empty());
    }

    #[test]
    fn the_built_in_list_parses() {
        let analyzer = Analyzer::default();
        let synonyms = Synonyms::parse(BUILT_IN, &analyzer);
        assert!(!synonyms.is_empty());
        let extra = synonyms.expand(&terms(&analyzer, "withdrawals"));
        assert!(extra[0].contains(&"atm".to_string()), "{extra:?}");
    }
}
