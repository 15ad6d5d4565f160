//! How text becomes search terms, the same for records (at ingestion) and
//! questions (at retrieval), so both engines index and look up exactly the
//! terms this module makes: words split at anything not a letter or digit,
//! diacritics removed (`é` → `e`, `ü` → `u`; letters with no such form kept),
//! lower-cased, reduced to their English (Porter2) stem.

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Names this analysis in `kb_state.analyzer`. Change it whenever the terms
/// this module makes change: the next start re-analyses every record.
pub const ANALYZER_VERSION: i64 = 1;

/// Analyses words into terms.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

impl Analyzer {
    /// A text's words, lower-cased and without diacritics, in order.
    pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(fold)
    }

    /// The term a folded word is indexed under.
    pub fn stem(&self, word: &str) -> String {
        self.stemmer.stem(word).into_owned()
    }

    /// A text's terms in order, space-separated: what the terms columns hold.
    pub fn terms(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for word in Self::words(text) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&self.stemmer.stem(&word));
        }
        out
    }

    /// A record's (title terms, text terms). The title's last heading (a
    /// guide section's own title, or an FAQ's question) goes to the title
    /// column, which counts double; the headings above it go with the
    /// text: a guide's title repeated in every section's title would
    /// otherwise make every section look like the best match for it.
    pub fn record_terms(&self, title: Option<&str>, text: &str) -> (String, String) {
        let title = title.unwrap_or_default();
        let (parents, own) = title.rsplit_once(" > ").unwrap_or(("", title));
        let mut body = self.terms(parents);
        let text = self.terms(text);
        if !body.is_empty() && !text.is_empty() {
            body.push(' ');
        }
        body.push_str(&text);
        (self.terms(own), body)
    }
}

/// Lower-cased, combining marks dropped after canonical decomposition.
fn fold(word: &str) -> String {
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    word.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_folded_lower_cased_stems_in_order() {
        let analyzer = Analyzer::default();
        assert_eq!(
            analyzer.terms("Freezing my CARDS: Überweisung, café-payments!"),
            "freez my card uberweisung cafe payment"
        );
        assert_eq!(analyzer.terms("  ...  "), "");
        assert_eq!(analyzer.terms("2FA 1.5%"), "2fa 1 5");
        // No ASCII form: kept as the letters they are.
        assert_eq!(analyzer.terms("Карта"), "карта");
    }

    #[test]
    fn a_sections_own_heading_is_its_title() {
        let analyzer = Analyzer::default();
        assert_eq!(
            analyzer.record_terms(Some("Disputes > Provisional credit"), "We credit it."),
            ("provision credit".into(), "disput we credit it".into())
        );
        assert_eq!(
            analyzer.record_terms(Some("Can I cancel?"), "No."),
            ("can i cancel".into(), "no".into())
        );
        assert_eq!(
            analyzer.record_terms(None, "Text"),
            ("".into(), "text".into())
        );
    }

    #[test]
    fn a_word_and_its_inflections_share_a_term() {
        let analyzer = Analyzer::default();
        for (a, b) in [
            ("withdrawals", "withdrawal"),
            ("charged", "charges"),
            ("disputing", "dispute"),
        ] {
            assert_eq!(analyzer.terms(a), analyzer.terms(b), "{a} / {b}");
        }
    }
}
