//! Search of the local knowledge base: a question becomes groups of terms
//! (each word, its synonyms, or the known term it is a typo of), the engine
//! finds candidates (`storage::knowledge::candidates`), and each candidate
//! is scored by how much of the question's information it covers: the sum
//! of the inverse document frequencies of the question's words it holds
//! over that of all of them (0..1). A raw BM25 value cannot tell a
//! paraphrase that shares one rare word from an off-topic question that
//! shares one common word; the covered share can, and it means the same on
//! both engines, so one `RETRIEVAL_MIN_SCORE` serves both.
//!
//! The vocabulary (every indexed term and how many records hold it) is read
//! once per knowledge-base version and kept in memory: looking document
//! frequencies up in the index took about 2.5 ms of a 10 ms search at
//! 50,000 records (bench section 8), and typo correction needs the terms.
//! It costs about 2.5 MiB at 50,000 generated records (bench section 6 with
//! `--kb-records 50000`: jemalloc's allocated bytes after the run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::clients::retrieval::Passage;
use crate::storage::{Database, knowledge};

use super::analyze::Analyzer;
use super::synonyms::Synonyms;

/// How many candidates the engine returns before they are scored: enough
/// that a record covering the question well is among them even when the
/// engine's own rank put common-word matches first.
const CANDIDATES: usize = 50;

/// At most this many of a question's words are searched (a pasted essay
/// would otherwise mean hundreds of index lookups).
const MAX_WORDS: usize = 32;

/// Words that carry no topic: left out of queries, or every "how do I"
/// question would match every record that says "how".
const STOP_WORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "get", "got", "had", "has", "have", "hello",
    "hey", "hi", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "of", "on",
    "or", "our", "please", "should", "so", "some", "than", "thank", "thanks", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "to", "too", "us", "was", "we",
    "were", "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
];

/// The searchable words of a question: lower-cased and folded, stop words
/// and single characters dropped, each once, in order, at most
/// [`MAX_WORDS`].
pub fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in Analyzer::words(text) {
        if word.chars().count() < 2 || STOP_WORDS.contains(&word.as_str()) || words.contains(&word)
        {
            continue;
        }
        words.push(word);
        if words.len() == MAX_WORDS {
            break;
        }
    }
    words
}

/// One version of the index's vocabulary.
#[derive(Default)]
struct Snapshot {
    version: Option<i64>,
    documents: i64,
    frequency: HashMap<String, i64>,
    /// Terms by first character and length in characters, for typo
    /// correction.
    by_shape: HashMap<(char, usize), Vec<(String, i64)>>,
}

impl Snapshot {
    fn new(vocabulary: knowledge::Vocabulary) -> Self {
        let mut by_shape: HashMap<(char, usize), Vec<(String, i64)>> = HashMap::new();
        for (term, count) in &vocabulary.terms {
            if let Some(first) = term.chars().next() {
                by_shape
                    .entry((first, term.chars().count()))
                    .or_default()
                    .push((term.clone(), *count));
            }
        }
        Self {
            version: Some(vocabulary.version),
            documents: vocabulary.documents,
            frequency: vocabulary.terms.into_iter().collect(),
            by_shape,
        }
    }

    fn frequency(&self, term: &str) -> i64 {
        self.frequency.get(term).copied().unwrap_or(0)
    }

    /// The indexed term `term` is most likely a typo of: same first letter,
    /// within one edit (two from eight letters on; transpositions count
    /// one), the closest and then the most frequent. Short words and words
    /// with digits are not corrected: too many real words are one edit apart.
    fn correct(&self, term: &str) -> Option<(String, i64)> {
        let length = term.chars().count();
        let first = term.chars().next()?;
        if length < 4 || term.chars().any(|c| c.is_ascii_digit()) {
            return None;
        }
        let most = if length >= 8 { 2 } else { 1 };
        let mut best: Option<(usize, &(String, i64))> = None;
        for shape in length - most..=length + most {
            for known in self.by_shape.get(&(first, shape)).into_iter().flatten() {
                let distance = strsim::osa_distance(term, &known.0);
                if distance > most {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((at, current)) => distance < at || (distance == at && known.1 > current.1),
                };
                if better {
                    best = Some((distance, known));
                }
            }
        }
        best.map(|(_, known)| known.clone())
    }
}

/// Inverse document frequency, always positive (Lucene's BM25 form).
/// (A count from the index may exceed a vocabulary's older total.)
fn idf(documents: i64, containing: i64) -> f64 {
    let (n, df) = (documents.max(containing) as f64, containing as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// How much of a word's weight a record earns by holding one of its
/// synonyms instead of the word: most of it (a synonym is an operator's
/// statement that the words mean the same), but a record in the question's
/// own words ranks first.
const SYNONYM_CREDIT: f64 = 0.8;

/// ... and by holding the term a word not in the index was taken for a
/// typo of: half, as the guess may be wrong ("speed" is one letter from
/// "spend"), so an off-topic question does not look covered by guesses.
const CORRECTION_CREDIT: f64 = 0.5;

/// A word of the question: the terms that count as it being present (each
/// with its document frequency and the share of the weight it earns), and
/// its weight.
#[derive(Debug, Clone, PartialEq)]
struct Concept {
    terms: Vec<(String, i64, f64)>,
    weight: f64,
}

/// The local knowledge base's search, with its cached vocabulary.
pub struct LocalSearch {
    db: Database,
    analyzer: Analyzer,
    synonyms: Synonyms,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// Held while the first vocabulary is read.
    first: tokio::sync::Mutex<()>,
    /// Set while a newer vocabulary is read in the background.
    reloading: Arc<AtomicBool>,
}

impl std::fmt::Debug for LocalSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSearch").finish_non_exhaustive()
    }
}

impl LocalSearch {
    /// A search of `db`'s knowledge base with `synonyms` (the list format of
    /// [`Synonyms::parse`]; `None` for none).
    pub fn new(db: Database, synonyms: Option<&str>) -> Self {
        let analyzer = Analyzer::default();
        let synonyms = synonyms
            .map(|text| Synonyms::parse(text, &analyzer))
            .unwrap_or_default();
        Self {
            db,
            analyzer,
            synonyms,
            snapshot: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            first: tokio::sync::Mutex::new(()),
            reloading: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the knowledge base holds any record (false when it cannot
    /// be read).
    pub async fn has_records(&self) -> bool {
        self.snapshot()
            .await
            .is_ok_and(|(snapshot, _)| snapshot.documents > 0)
    }

    /// The best `top_k` records for `text`, best first, unfiltered.
    pub async fn search(&self, text: &str, top_k: usize) -> Result<Vec<Passage>, sqlx::Error> {
        let words = query_words(text);
        if words.is_empty() || top_k == 0 {
            return Ok(Vec::new());
        }
        let (snapshot, current) = self.snapshot().await?;
        let (all, expansions) = self.analyse(text);
        // A vocabulary being read again does not know the words the latest
        // records brought: the index is asked for those.
        let mut late = HashMap::new();
        if !current {
            let mut unknown: Vec<String> = all
                .iter()
                .chain(expansions.iter().flatten())
                .filter(|term| snapshot.frequency(term) == 0)
                .cloned()
                .collect();
            unknown.sort();
            unknown.dedup();
            unknown.truncate(MAX_WORDS * 2);
            let counts = knowledge::frequencies(&self.db, &unknown).await?;
            late = unknown.into_iter().zip(counts).collect();
        }
        let concepts = self.concepts(&words, &all, &expansions, &snapshot, &late);
        let groups: Vec<Vec<knowledge::Term>> = concepts
            .iter()
            .map(|concept| {
                concept
                    .terms
                    .iter()
                    .map(|(term, count, _)| (term.clone(), *count))
                    .collect()
            })
            .collect();
        let found = knowledge::candidates(&self.db, &groups, CANDIDATES.max(top_k)).await?;
        let total: f64 = concepts.iter().map(|concept| concept.weight).sum();
        // Which concepts each term stands for, with the credit it earns.
        let mut stands_for: HashMap<&str, Vec<(usize, f64)>> = HashMap::new();
        for (at, concept) in concepts.iter().enumerate() {
            for (term, _, credit) in &concept.terms {
                stands_for
                    .entry(term.as_str())
                    .or_default()
                    .push((at, *credit));
            }
        }
        let mut scored: Vec<Passage> = found
            .into_iter()
            .map(|candidate| {
                let mut earned = vec![0.0f64; concepts.len()];
                for term in candidate
                    .title_terms
                    .split(' ')
                    .chain(candidate.text_terms.split(' '))
                {
                    for (at, credit) in stands_for.get(term).into_iter().flatten() {
                        earned[*at] = earned[*at].max(*credit);
                    }
                }
                let covered: f64 = concepts
                    .iter()
                    .zip(&earned)
                    .map(|(concept, credit)| concept.weight * credit)
                    .sum();
                Passage {
                    id: candidate.id,
                    title: candidate.title,
                    category: candidate.category,
                    url: candidate.url,
                    text: candidate.text,
                    score: if total > 0.0 { covered / total } else { 0.0 },
                }
            })
            .collect();
        // Stable: among equal coverage the engine's own ranking decides.
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored.truncate(top_k);
        Ok(scored)
    }

    /// The question's concepts: each searchable word with the indexed terms
    /// that stand for it (itself, its synonyms; the term it is a typo of
    /// when the index does not hold it) and its weight (the IDF of the word,
    /// or of its most common stand-in; a word nothing stands for weighs as
    /// a term no record holds, so an off-topic question covers little).
    fn concepts(
        &self,
        words: &[String],
        all: &[String],
        expansions: &[Vec<String>],
        snapshot: &Snapshot,
        late: &HashMap<String, i64>,
    ) -> Vec<Concept> {
        let frequency = |term: &str| {
            snapshot
                .frequency(term)
                .max(late.get(term).copied().unwrap_or(0))
        };
        let mut seen: Vec<String> = Vec::new();
        let mut concepts = Vec::new();
        for word in words {
            let stem = self.analyzer.stem(word);
            if seen.contains(&stem) {
                continue;
            }
            seen.push(stem.clone());
            let mut alternatives: Vec<String> = all
                .iter()
                .zip(expansions)
                .filter(|(term, _)| **term == stem)
                .flat_map(|(_, extra)| extra.iter().cloned())
                .collect();
            let own = frequency(&stem);
            let mut terms: Vec<(String, i64, f64)> = Vec::new();
            let mut credit = SYNONYM_CREDIT;
            if own > 0 {
                terms.push((stem.clone(), own, 1.0));
            } else if alternatives.is_empty()
                && let Some((corrected, count)) = snapshot.correct(&stem)
            {
                alternatives.extend(
                    self.synonyms
                        .expand(std::slice::from_ref(&corrected))
                        .concat(),
                );
                terms.push((corrected, count, CORRECTION_CREDIT));
                credit = CORRECTION_CREDIT * SYNONYM_CREDIT;
            }
            for alternative in alternatives {
                let count = frequency(&alternative);
                if count > 0 && !terms.iter().any(|(term, _, _)| *term == alternative) {
                    terms.push((alternative, count, credit));
                }
            }
            let weight = if own > 0 {
                idf(snapshot.documents, own)
            } else {
                let most = terms.iter().map(|(_, count, _)| *count).max().unwrap_or(0);
                idf(snapshot.documents, most)
            };
            concepts.push(Concept { terms, weight });
        }
        concepts
    }

    /// A question's terms (all its words, stop words included, in order)
    /// and their synonyms.
    fn analyse(&self, text: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let all: Vec<String> = Analyzer::words(text)
            .take(MAX_WORDS * 8)
            .map(|word| self.analyzer.stem(&word))
            .collect();
        let expansions = self.synonyms.expand(&all);
        (all, expansions)
    }

    /// Reads the vocabulary now (the server does at start, so the first
    /// question does not wait for it).
    pub async fn warm(&self) -> Result<(), sqlx::Error> {
        self.snapshot().await.map(|_| ())
    }

    /// The vocabulary, and whether it is the knowledge base's current
    /// version. The first is read while the caller waits (about 250 ms at
    /// 50,000 records); a newer version is read in the background while
    /// questions are answered with the one held, or an ingestion into a
    /// live server would make every turn wait for a read of the whole
    /// index.
    async fn snapshot(&self) -> Result<(Arc<Snapshot>, bool), sqlx::Error> {
        let version = knowledge::version(&self.db).await?;
        let held = self.held();
        if held.version == Some(version) {
            return Ok((held, true));
        }
        if held.version.is_some() {
            if !self.reloading.swap(true, Ordering::AcqRel) {
                let db = self.db.clone();
                let slot = self.snapshot.clone();
                let reloading = self.reloading.clone();
                tokio::spawn(async move {
                    match knowledge::vocabulary(&db).await {
                        Ok(vocabulary) => {
                            if let Ok(mut slot) = slot.write() {
                                *slot = Arc::new(Snapshot::new(vocabulary));
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot read the knowledge base's vocabulary")
                        }
                    }
                    reloading.store(false, Ordering::Release);
                });
            }
            return Ok((held, false));
        }
        let _reading = self.first.lock().await;
        let held = self.held();
        if held.version.is_some() {
            let current = held.version == Some(version);
            return Ok((held, current));
        }
        let fresh = Arc::new(Snapshot::new(knowledge::vocabulary(&self.db).await?));
        if let Ok(mut slot) = self.snapshot.write() {
            *slot = fresh.clone();
        }
        let current = fresh.version == Some(version);
        Ok((fresh, current))
    }

    fn held(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_keep_the_topic_words_once() {
        assert_eq!(
            query_words("How do I reset my PIN? My PIN-code, please!"),
            ["reset", "pin", "code"]
        );
        assert_eq!(
            query_words("Überweisung ins Ausland"),
            ["uberweisung", "ins", "ausland"]
        );
        assert!(query_words("how do I ... ?").is_empty());
        assert_eq!(query_words(&"word ".repeat(100)).len(), 1);
    }

    fn snapshot(terms: &[(&str, i64)]) -> Snapshot {
        Snapshot::new(knowledge::Vocabulary {
            version: 1,
            documents: 100,
            terms: terms
                .iter()
                .map(|(term, count)| (term.to_string(), *count))
                .collect(),
        })
    }

    #[test]
    fn typos_are_corrected_to_the_closest_then_most_common_term() {
        let known = snapshot(&[("card", 40), ("cart", 2), ("transfer", 30), ("interest", 5)]);
        assert_eq!(known.correct("crad"), Some(("card".into(), 40)));
        assert_eq!(known.correct("carx"), Some(("card".into(), 40)));
        assert_eq!(known.correct("trasnfre"), Some(("transfer".into(), 30)));
        assert_eq!(known.correct("intrest"), Some(("interest".into(), 5)));
        // Short, other first letter, too far, digits: left alone.
        assert_eq!(known.correct("crd"), None);
        assert_eq!(known.correct("ard"), None);
        assert_eq!(known.correct("cxxd"), None);
        assert_eq!(known.correct("card2"), None);
    }

    #[tokio::test]
    async fn unknown_words_weigh_like_terms_no_record_holds() {
        let search = LocalSearch::new(
            Database::Sqlite(
                sqlx::SqlitePool::connect_lazy("sqlite::memory:")
                    .unwrap_or_else(|_| unreachable!("an in-memory URL always parses")),
            ),
            Some("lost, stolen"),
        );
        let known = snapshot(&[("card", 40), ("lost", 3), ("stolen", 6)]);
        let text = "my card was stolen in Lisbon";
        let (all, expansions) = search.analyse(text);
        let concepts = search.concepts(
            &query_words(text),
            &all,
            &expansions,
            &known,
            &HashMap::new(),
        );
        assert_eq!(concepts.len(), 3);
        assert_eq!(concepts[0].terms, [("card".to_string(), 40, 1.0)]);
        assert_eq!(
            concepts[1].terms,
            [
                ("stolen".to_string(), 6, 1.0),
                ("lost".to_string(), 3, SYNONYM_CREDIT)
            ]
        );
        assert!(concepts[2].terms.is_empty());
        assert!(concepts[2].weight > concepts[1].weight);
        assert!(concepts[1].weight > concepts[0].weight);
    }
}
