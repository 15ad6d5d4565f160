//! Which of a set of regexes match anywhere in a text, in one pass over it.
//!
//! `regex::RegexSet::matches` answers the same question, and is what this
//! falls back to; the fast path walks the same kind of automaton (the lazy
//! DFA of `regex-automata`, which `RegexSet` runs) by hand. Why by hand: a DFA
//! walk is one memory load per byte that depends on the previous one, so a
//! single walk runs at the load latency whatever the patterns: measured on
//! the guardrails' 36 patterns and 8,000-byte messages, `RegexSet::matches`
//! 23.7 µs (2.9 ns/byte), one walk by hand the same. Walking three parts of
//! the text at once, interleaved, lets the CPU overlap their loads: 12.2 µs
//! (two parts 12.5, four 13.7: past that, the walk's own instructions are
//! the limit, not the loads).
//!
//! Exact, not a heuristic: each part's walk goes on past its end until its
//! state is the one the next part's walk was in after the same byte (from
//! there on the two walks are the same walk), or to the end of the text.
//! When the DFA's cache is cleared during a walk (its states would be
//! stale), the answer comes from the `RegexSet` instead.
//!
//! Patterns match bytes, without Unicode (`.` and `[^x]` are one byte): the
//! guardrails give it ASCII text, and Unicode classes multiplied the
//! automaton's states (its cache on the bench's messages: 4.5 MB with them,
//! 2.8 MB without), which a message read after others pays for in cache
//! misses.

use std::panic::{RefUnwindSafe, UnwindSafe};

use regex::bytes::{RegexSet, RegexSetBuilder};
use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::pool::Pool;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};

/// Parts a text is walked in (see the module's note for the measurements).
const PARTS: usize = 3;
/// Texts shorter than this are walked in one part.
const MIN_SPLIT_LEN: usize = 256;
/// States recorded at the start of each part, to find where the previous
/// part's walk meets this one's; a walk that has not met it by then goes on
/// to the end of the text.
const RECORDED: usize = 256;

type CacheFn = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

pub struct PatternScreen {
    dfa: DFA,
    set: RegexSet,
    caches: Pool<Cache, CacheFn>,
}

/// Patterns found, bit `i` for pattern `i`.
pub type Found = u64;

impl PatternScreen {
    /// At most 64 patterns (`Found` is a bit set). `cache_bytes`: the lazy
    /// DFA's cache, per thread using it.
    pub fn new(patterns: &[String], cache_bytes: usize) -> Result<Self, String> {
        if patterns.len() > 64 {
            return Err(format!("{} patterns, at most 64", patterns.len()));
        }
        let dfa = DFA::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(cache_bytes),
            )
            .build_many(patterns)
            .map_err(|err| err.to_string())?;
        let set = RegexSetBuilder::new(patterns)
            .unicode(false)
            .dfa_size_limit(cache_bytes)
            .build()
            .map_err(|err| err.to_string())?;
        let for_caches = dfa.clone();
        let create: CacheFn = Box::new(move || for_caches.create_cache());
        Ok(Self {
            dfa,
            set,
            caches: Pool::new(create),
        })
    }

    /// The patterns with a match in `text`.
    pub fn matching(&self, text: &str) -> Found {
        let mut found = 0;
        self.any(text, |i, _| {
            found |= 1 << i;
            false
        });
        found
    }

    /// Whether a match in `text` is accepted: `accept(pattern, end)` is
    /// asked about every match the walk finds (in the order it finds them,
    /// which is not the text's), with the byte offset where it ends (a
    /// pattern matching several lengths at one start is asked about each),
    /// and the walk stops at the first it accepts. `end` is `None` when the
    /// answer comes from the `RegexSet`: a match somewhere.
    pub fn any(&self, text: &str, mut accept: impl FnMut(usize, Option<usize>) -> bool) -> bool {
        let mut cache = self.caches.get();
        let walked = if text.len() < MIN_SPLIT_LEN {
            self.walk::<1>(&mut cache, text.as_bytes(), &mut accept)
        } else {
            self.walk::<PARTS>(&mut cache, text.as_bytes(), &mut accept)
        };
        match walked {
            Ok(()) => false,
            Err(Halt::Accepted) => true,
            Err(Halt::Stale) => self
                .set
                .matches(text.as_bytes())
                .iter()
                .any(|i| accept(i, None)),
        }
    }

    fn walk<const K: usize>(
        &self,
        cache: &mut Cache,
        hay: &[u8],
        accept: &mut impl FnMut(usize, Option<usize>) -> bool,
    ) -> Result<(), Halt> {
        let dfa = &self.dfa;
        let len = hay.len();
        let part = len / K;
        let starts: [usize; K] = std::array::from_fn(|k| k * part);
        let clears = cache.clear_count();
        let mut sid = [LazyStateID::default(); K];
        for k in 0..K {
            let input = Input::new(hay).range(starts[k]..len);
            sid[k] = dfa
                .start_state_forward(cache, &input)
                .map_err(|_| Halt::Stale)?;
        }
        // A start state computed last may have cleared the cache under the
        // others.
        if cache.clear_count() != clears {
            return Err(Halt::Stale);
        }
        // A match state after the byte at `end`: matches ending there.
        let mut on_match = |cache: &Cache, sid: LazyStateID, end: usize| {
            for i in 0..dfa.match_len(cache, sid) {
                if accept(dfa.match_pattern(cache, sid, i).as_usize(), Some(end)) {
                    return Err(Halt::Accepted);
                }
            }
            Ok(())
        };
        // The parts side by side; the states after each part's first bytes
        // are kept.
        let mut recorded = [[LazyStateID::default(); K]; RECORDED];
        let kept = part.min(RECORDED);
        for (i, states) in recorded.iter_mut().take(kept).enumerate() {
            for k in 0..K {
                sid[k] = self.step(cache, clears, sid[k], hay, starts[k] + i, &mut on_match)?;
                states[k] = sid[k];
            }
        }
        for i in kept..part {
            for k in 0..K {
                sid[k] = self.step(cache, clears, sid[k], hay, starts[k] + i, &mut on_match)?;
            }
        }
        // The last part's remainder (when `len` is not a multiple of K).
        for at in K * part..len {
            sid[K - 1] = self.step(cache, clears, sid[K - 1], hay, at, &mut on_match)?;
        }
        // Each other part goes on until it meets the next one's walk (or
        // dies: a dead state has no match ahead).
        let mut at_end = [true; K];
        for k in 0..K - 1 {
            for (j, at) in (starts[k + 1]..len).enumerate() {
                sid[k] = self.step(cache, clears, sid[k], hay, at, &mut on_match)?;
                if sid[k].is_dead() || (j < kept && sid[k] == recorded[j][k + 1]) {
                    at_end[k] = false;
                    break;
                }
            }
        }
        // Matches at the very end show on the end-of-input transition.
        for k in 0..K {
            if at_end[k] {
                let next = dfa.next_eoi_state(cache, sid[k]).map_err(|_| Halt::Stale)?;
                if cache.clear_count() != clears {
                    return Err(Halt::Stale);
                }
                if next.is_match() {
                    on_match(cache, next, len)?;
                }
            }
        }
        Ok(())
    }

    /// One byte of a walk: the byte at `at`.
    #[inline(always)]
    fn step(
        &self,
        cache: &mut Cache,
        clears: usize,
        sid: LazyStateID,
        hay: &[u8],
        at: usize,
        on_match: &mut impl FnMut(&Cache, LazyStateID, usize) -> Result<(), Halt>,
    ) -> Result<LazyStateID, Halt> {
        let next = self
            .dfa
            .next_state(cache, sid, hay[at])
            .map_err(|_| Halt::Stale)?;
        // After a clear, the other parts' states are stale.
        if cache.clear_count() != clears {
            return Err(Halt::Stale);
        }
        if next.is_tagged() {
            if next.is_quit() {
                return Err(Halt::Stale);
            }
            if next.is_match() {
                on_match(cache, next, at)?;
            }
        }
        Ok(next)
    }
}

/// Why a walk ended early.
enum Halt {
    /// `accept` accepted a pattern.
    Accepted,
    /// The DFA's cache was cleared (its state ids are stale) or it gave up.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(patterns: &[&str]) -> PatternScreen {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        PatternScreen::new(&patterns, 1 << 20).expect("valid patterns")
    }

    fn from_set(screen: &PatternScreen, text: &str) -> Found {
        screen
            .set
            .matches(text.as_bytes())
            .iter()
            .fold(0, |found, i| found | 1 << i)
    }

    #[test]
    fn same_patterns_as_the_regex_set_wherever_the_parts_split() {
        let s = screen(&[
            r"(?-u:\b)ignore previous(?-u:\b)",
            r"x[^z]*y",
            r"^start",
            r"end$",
            r"(?-u:\b)a(?-u:\b)",
            r"q{300}",
            r"[0-9]+ mode",
        ]);
        let filler = "lorem ipsum dolor sit amet ".repeat(40);
        let mut texts = vec![
            String::new(),
            "a".to_string(),
            "start and end".to_string(),
            format!("start {filler} end"),
            format!("{filler}ignore previous{filler}"),
            // A match from the first part to the last: the first part's
            // walk never meets the others and goes on to the end.
            format!("x{filler}{filler}{filler}y"),
            format!("x{filler}z{filler}y"),
            format!("{filler}{}{filler}", "q".repeat(300)),
            format!("{filler}{}{filler}", "q".repeat(299)),
            format!("{filler}42 mode"),
            format!("{filler} a"),
            format!("{filler}ab"),
        ];
        // Every split point through a match.
        let base = format!("{filler}ignore previous 7 mode{filler}");
        for cut in 0..40 {
            texts.push(base[cut * 7..].to_string());
        }
        for text in &texts {
            assert_eq!(s.matching(text), from_set(&s, text), "{text:?}");
        }
    }

    #[test]
    fn asks_about_every_match_end_and_stops_at_the_first_accepted() {
        let s = screen(&["first", "second", "(?-u:\\b)one( more)?"]);
        let text = format!(
            "first second one {} first one more second",
            "word ".repeat(200)
        );
        let mut asked = Vec::new();
        assert!(!s.any(&text, |i, end| {
            asked.push((i, end));
            false
        }));
        asked.sort();
        let mut expected = Vec::new();
        for (i, word) in ["first", "second", "one"].iter().enumerate() {
            for (at, _) in text.match_indices(word) {
                expected.push((i, Some(at + word.len())));
            }
        }
        // "one more" also ends after "more".
        expected.push((2, Some(text.len() - " second".len())));
        expected.sort();
        assert_eq!(asked, expected);
        // Stops at the first accepted.
        let mut asked = 0;
        assert!(s.any(&text, |i, _| {
            asked += 1;
            i == 1
        }));
        assert!(asked < expected.len());
        assert!(!s.any("nothing here", |_, _| true));
    }

    #[test]
    fn a_cache_cleared_mid_walk_falls_back_to_the_set() {
        // A cache far too small for these patterns' states: it is cleared
        // during the walk, and the answer must still be the set's.
        let patterns: Vec<String> = [r"a[a-z]{0,12}b[a-z]{0,12}c", r"q[a-z]{3,9}z", r"zz"]
            .iter()
            .map(|p| p.to_string())
            .collect();
        let s = PatternScreen::new(&patterns, 16 << 10).expect("valid patterns");
        let mut seed: u32 = 7;
        let text: String = (0..6_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                char::from(b'a' + ((seed >> 16) % 26) as u8)
            })
            .collect();
        for text in [text.as_str(), &text[..3_000], &text[100..200]] {
            assert_eq!(s.matching(text), from_set(&s, text));
        }
    }

    #[test]
    fn too_many_patterns_is_an_error() {
        let patterns: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
        assert!(PatternScreen::new(&patterns, 1 << 20).is_err());
    }
}
