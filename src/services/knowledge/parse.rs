//! Knowledge-base source files turned into records: Markdown/text guides
//! chunked at headings, CSV FAQs, JSON Lines.
//!
//! Record ids are stable across runs: the file's own `id` when it gives one,
//! else `{source}#{n}`, where `n` is the record's position in its file: the
//! chunk number for guides, the 1-based data row for CSV (bad rows counted,
//! so fixing one does not renumber the others) and the 1-based line for
//! JSON Lines.

use std::path::Path;

use serde::Serialize;

/// Longest chunk text; longer sections are split at paragraphs, then sentences.
pub const MAX_CHUNK_CHARS: usize = 1500;

/// One knowledge-base record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub id: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    pub text: String,
}

/// A row that could not be read: where (1-based line where it starts) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: usize,
    pub reason: String,
}

/// What one file gave.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub bad_rows: Vec<BadRow>,
}

/// The kinds of file the parser reads, from the extension (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Text,
    Csv,
    JsonLines,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match extension.as_str() {
            "md" | "markdown" => Self::Markdown,
            "txt" => Self::Text,
            "csv" => Self::Csv,
            "jsonl" => Self::JsonLines,
            _ => return None,
        })
    }
}

/// Why a whole file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// Parses one file's contents. `source` is the id prefix (the path as the
/// user gave it, normalised by the caller).
pub fn parse(format: Format, source: &str, contents: &str) -> Result<Parsed, FileError> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    match format {
        Format::Markdown => Ok(parse_guide(source, contents, true)),
        Format::Text => Ok(parse_guide(source, contents, false)),
        Format::Csv => parse_csv(source, contents),
        Format::JsonLines => Ok(parse_json_lines(source, contents)),
    }
}

/// PostgreSQL text cannot hold NUL.
fn clean(text: &str) -> String {
    text.replace('\0', "").trim().to_string()
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.map(clean).filter(|text| !text.is_empty())
}

/// The file name without extension, `-`/`_` as spaces: a guide's title
/// when it has no level-1 heading.
fn stem_title(source: &str) -> String {
    let stem = Path::new(source)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or(source);
    stem.replace(['-', '_'], " ").trim().to_string()
}

/// An ATX heading: (level, text).
fn heading(line: &str) -> Option<(usize, String)> {
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &trimmed[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = clean(rest.trim().trim_end_matches('#'));
    Some((level, text))
}

/// Guides: sections at headings (Markdown), each split to fit the size limit.
fn parse_guide(source: &str, contents: &str, markdown: bool) -> Parsed {
    let document_title = if markdown {
        let mut fenced = false;
        contents
            .lines()
            .find_map(|line| {
                if line.trim_start().starts_with("```") {
                    fenced = !fenced;
                }
                match heading(line) {
                    Some((1, text)) if !fenced && !text.is_empty() => Some(text),
                    _ => None,
                }
            })
            .unwrap_or_else(|| stem_title(source))
    } else {
        stem_title(source)
    };
    // (heading path, body) per section, in order.
    let mut sections: Vec<(Vec<String>, String)> = vec![(Vec::new(), String::new())];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut fenced = false;
    for line in contents.lines() {
        if markdown && line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        match heading(line).filter(|_| markdown && !fenced) {
            Some((level, text)) => {
                path.retain(|(other, _)| *other < level);
                path.push((level, text));
                sections.push((
                    path.iter().map(|(_, text)| text.clone()).collect(),
                    String::new(),
                ));
            }
            None => {
                if let Some((_, body)) = sections.last_mut() {
                    // A line of spaces is a blank line: a paragraph boundary for `split`.
                    if !line.trim().is_empty() {
                        body.push_str(line);
                    }
                    body.push('\n');
                }
            }
        }
    }
    let mut parsed = Parsed::default();
    for (headings, body) in sections {
        let body = clean(&body);
        if body.is_empty() {
            continue;
        }
        // The document title heads every path once (a level-1 heading is it).
        let mut titles = vec![document_title.clone()];
        titles.extend(
            headings
                .into_iter()
                .filter(|text| !text.is_empty())
                .skip_while(|text| *text == document_title),
        );
        let title = titles.join(" > ");
        for text in split(&body) {
            let n = parsed.records.len() + 1;
            parsed.records.push(Record {
                id: format!("{source}#{n}"),
                title: Some(title.clone()),
                category: Some(document_title.clone()),
                url: None,
                text,
            });
        }
    }
    parsed
}

/// Splits a section into chunks of at most [`MAX_CHUNK_CHARS`]: whole
/// paragraphs together while they fit, an over-long paragraph at sentence
/// ends, an over-long sentence at spaces (or anywhere, as a last resort).
fn split(body: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    for paragraph in body.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if paragraph.chars().count() <= MAX_CHUNK_CHARS {
            pieces.push(paragraph.to_string());
        } else {
            pieces.extend(split_long(paragraph));
        }
    }
    let mut chunks: Vec<String> = Vec::new();
    for piece in pieces {
        match chunks.last_mut() {
            Some(last) if last.chars().count() + 2 + piece.chars().count() <= MAX_CHUNK_CHARS => {
                last.push_str("\n\n");
                last.push_str(&piece);
            }
            _ => chunks.push(piece),
        }
    }
    chunks
}

/// An over-long paragraph as pieces that fit, cut after sentence ends
/// (`. `, `! `, `? `) where possible, else at whitespace, else anywhere.
fn split_long(paragraph: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = paragraph.trim();
    while rest.chars().count() > MAX_CHUNK_CHARS {
        let limit = rest
            .char_indices()
            .nth(MAX_CHUNK_CHARS)
            .map_or(rest.len(), |(index, _)| index);
        let window = &rest[..limit];
        let cut = ['.', '!', '?']
            .iter()
            .filter_map(|end| window.rfind(&format!("{end} ")).map(|at| at + 1))
            .max()
            .filter(|at| *at > limit / 3)
            .or_else(|| window.rfind(char::is_whitespace).filter(|at| *at > 0))
            .unwrap_or(limit);
        pieces.push(rest[..cut].trim().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

/// A question and its answer as one record text.
fn qa_text(question: &str, answer: &str) -> String {
    format!("{question}\n{answer}")
}

fn parse_csv(source: &str, contents: &str) -> Result<Parsed, FileError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(contents.as_bytes());
    let headers = reader
        .headers()
        .map_err(|err| FileError(format!("unreadable CSV header: {err}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|header| header.trim().eq_ignore_ascii_case(name))
    };
    let (Some(question), Some(answer)) = (column("question"), column("answer")) else {
        return Err(FileError(
            "the CSV header needs a question and an answer column".into(),
        ));
    };
    let (id, category, url, title) = (
        column("id"),
        column("category"),
        column("url"),
        column("title"),
    );
    let mut parsed = Parsed::default();
    let mut record = csv::StringRecord::new();
    let mut row = 0;
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(err) => {
                row += 1;
                let line = err
                    .position()
                    .map_or(line, |position| position.line() as usize);
                parsed.bad_rows.push(BadRow {
                    line,
                    reason: format!("unreadable CSV row: {err}"),
                });
                continue;
            }
        }
        row += 1;
        let line = record
            .position()
            .map_or(line, |position| position.line() as usize);
        let field = |index: Option<usize>| non_empty(index.and_then(|index| record.get(index)));
        let (Some(q), Some(a)) = (field(Some(question)), field(Some(answer))) else {
            parsed.bad_rows.push(BadRow {
                line,
                reason: "the question or the answer is empty".into(),
            });
            continue;
        };
        parsed.records.push(Record {
            id: field(id).unwrap_or_else(|| format!("{source}#{row}")),
            title: field(title).or_else(|| Some(q.clone())),
            category: field(category),
            url: field(url),
            text: qa_text(&q, &a),
        });
    }
    Ok(parsed)
}

fn parse_json_lines(source: &str, contents: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, line) in contents.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut bad = |reason: &str| {
            parsed.bad_rows.push(BadRow {
                line: number,
                reason: reason.to_string(),
            })
        };
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(err) => {
                bad(&format!("not JSON: {err}"));
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            bad("not a JSON object");
            continue;
        };
        let field = |name: &str| non_empty(object.get(name).and_then(|value| value.as_str()));
        let (text, question) = match (field("text"), field("question"), field("answer")) {
            (Some(text), _, _) => (text, None),
            (None, Some(question), Some(answer)) => (qa_text(&question, &answer), Some(question)),
            _ => {
                bad("needs \"text\", or \"question\" and \"answer\"");
                continue;
            }
        };
        parsed.records.push(Record {
            id: field("id").unwrap_or_else(|| format!("{source}#{number}")),
            title: field("title").or(question),
            category: field("category"),
            url: field("url"),
            text,
        });
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guide(contents: &str) -> Parsed {
        parse(Format::Markdown, "guides/travel.md", contents).expect("parsed")
    }

    #[test]
    fn guides_are_chunked_at_headings_with_their_heading_path() {
        let parsed = guide(
            "Intro before any heading.\n\n# Using your card abroad\n\nOverview.\n\n## Fees\n\nForeign fees are 1.5%.\n\n### ATM\n\nATMs cost 2 EUR.\n\n## Empty\n\n## Blocked card\n\n```\n# not a heading\n```\nCall us.\n",
        );
        let titles: Vec<_> = parsed
            .records
            .iter()
            .map(|record| record.title.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            titles,
            [
                "Using your card abroad",
                "Using your card abroad",
                "Using your card abroad > Fees",
                "Using your card abroad > Fees > ATM",
                "Using your card abroad > Blocked card",
            ]
        );
        assert_eq!(parsed.records[0].text, "Intro before any heading.");
        assert!(parsed.records[4].text.contains("# not a heading"));
        assert!(
            parsed
                .records
                .iter()
                .all(|record| record.category.as_deref() == Some("Using your card abroad"))
        );
        let ids: Vec<_> = parsed
            .records
            .iter()
            .map(|record| record.id.as_str())
            .collect();
        assert_eq!(ids[0], "guides/travel.md#1");
        assert_eq!(ids[4], "guides/travel.md#5");
    }

    #[test]
    fn long_sections_split_at_paragraphs_then_sentences_losing_nothing() {
        let paragraph = "A sentence about card limits that goes on for a while. ".repeat(20);
        let long = "Word ".repeat(400);
        let body = format!(
            "# Title\n\n{paragraph}\n\n{paragraph}\n\n{}\n\n{long}",
            "x".repeat(2000)
        );
        let parsed = guide(&body);
        assert!(parsed.records.len() > 3);
        for record in &parsed.records {
            assert!(
                record.text.chars().count() <= MAX_CHUNK_CHARS,
                "{}",
                record.text.len()
            );
        }
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join("");
        let joined: String = parsed
            .records
            .iter()
            .map(|record| words(&record.text))
            .collect();
        assert_eq!(joined, words(&body.replace("# Title", "")));
    }

    #[test]
    fn text_files_are_titled_by_their_name() {
        let parsed = parse(
            Format::Text,
            "docs/opening_hours.txt",
            "We open at 9.\n\nWe close at 5.",
        )
        .expect("parsed");
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.records[0].title.as_deref(), Some("opening hours"));
    }

    #[test]
    fn csv_rows_become_records_and_bad_rows_name_their_first_line() {
        let contents = "ID , Question,Answer,category,url,title\n\
            faq-1,How do I freeze my card?,\"In the app,\nunder Cards.\",Cards,https://x.example/f,\n\
            ,What is my limit?,500 EUR a day,,,Daily limit\n\
            faq-3,,An answer alone,,,\n\
            faq-4,Nul\0 here?,Yes\0,,,\n";
        let parsed = parse(Format::Csv, "faq.csv", contents).expect("parsed");
        assert_eq!(parsed.records.len(), 3);
        assert_eq!(parsed.records[0].id, "faq-1");
        assert_eq!(
            parsed.records[0].text,
            "How do I freeze my card?\nIn the app,\nunder Cards."
        );
        assert_eq!(parsed.records[0].category.as_deref(), Some("Cards"));
        assert_eq!(
            parsed.records[0].title.as_deref(),
            Some("How do I freeze my card?")
        );
        assert_eq!(parsed.records[1].id, "faq.csv#2");
        assert_eq!(parsed.records[1].title.as_deref(), Some("Daily limit"));
        assert_eq!(parsed.records[2].text, "Nul here?\nYes");
        assert_eq!(parsed.bad_rows.len(), 1);
        assert_eq!(parsed.bad_rows[0].line, 5, "after a two-line record");
        let missing = parse(Format::Csv, "faq.csv", "question,reply\na,b\n");
        assert!(missing.is_err());
    }

    #[test]
    fn json_lines_take_text_or_question_and_answer() {
        let contents = "{\"id\": \"a\", \"text\": \"Fees are low.\", \"category\": \"Fees\"}\n\n\
            not json\n\
            [1, 2]\n\
            {\"question\": \"Q?\", \"answer\": \"A.\", \"url\": \"https://x.example\"}\n\
            {\"title\": \"nothing else\"}\n";
        let parsed = parse(Format::JsonLines, "extra.jsonl", contents).expect("parsed");
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.records[1].id, "extra.jsonl#5");
        assert_eq!(parsed.records[1].text, "Q?\nA.");
        assert_eq!(
            parsed
                .bad_rows
                .iter()
                .map(|bad| bad.line)
                .collect::<Vec<_>>(),
            [3, 4, 6]
        );
    }

    #[test]
    fn fixing_a_bad_row_keeps_the_other_ids() {
        let before =
            parse(Format::Csv, "f.csv", "question,answer\na,1\n,2\nc,3\n").expect("parsed");
        let after =
            parse(Format::Csv, "f.csv", "question,answer\na,1\nb,2\nc,3\n").expect("parsed");
        assert_eq!(before.records[1].id, after.records[2].id);
    }

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(
            Format::from_path(Path::new("a/B.MD")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::from_path(Path::new("faq.csv")), Some(Format::Csv));
        assert_eq!(
            Format::from_path(Path::new("x.jsonl")),
            Some(Format::JsonLines)
        );
        assert_eq!(
            Format::from_path(Path::new("notes.markdown")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::from_path(Path::new("a.TXT")), Some(Format::Text));
        assert_eq!(
            Format::from_path(Path::new("X.JSONL")),
            Some(Format::JsonLines)
        );
        assert_eq!(Format::from_path(Path::new("logo.png")), None);
        assert_eq!(Format::from_path(Path::new("README")), None);
    }

    fn titles(parsed: &Parsed) -> Vec<String> {
        parsed
            .records
            .iter()
            .map(|record| record.title.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn heading_paths_go_back_up_and_a_guide_without_a_title_uses_its_name() {
        let parsed = guide(
            "# Cards\n\n## Lost or stolen card\n\nFreeze it.\n\n### Abroad\n\nCall us.\n\n## Limits\n\n500 EUR.\n\n# Other\n\nMore.\n",
        );
        assert_eq!(
            titles(&parsed),
            [
                "Cards > Lost or stolen card",
                "Cards > Lost or stolen card > Abroad",
                "Cards > Limits",
                "Cards > Other",
            ]
        );
        assert_eq!(parsed.records[2].text, "500 EUR.");

        let untitled = parse(
            Format::Markdown,
            "guides/card-fees.md",
            "Intro.\n\n## Fees\n\nLow.\n",
        )
        .expect("parsed");
        assert_eq!(titles(&untitled), ["card fees", "card fees > Fees"]);
        assert!(
            untitled
                .records
                .iter()
                .all(|record| record.category.as_deref() == Some("card fees"))
        );
    }

    #[test]
    fn text_files_group_paragraphs_up_to_the_limit_and_have_no_headings() {
        let paragraph = "Branches open at nine and close at five on weekdays. ".repeat(10);
        // The second separator is a line of spaces: still a paragraph boundary.
        let contents = format!("# not a heading\n\n{paragraph}\n   \n{paragraph}\n\n{paragraph}\n");
        let parsed = parse(Format::Text, "hours.txt", &contents).expect("parsed");
        assert_eq!(parsed.records.len(), 2);
        assert!(parsed.records[0].text.starts_with("# not a heading"));
        for (n, record) in parsed.records.iter().enumerate() {
            assert!(record.text.chars().count() <= MAX_CHUNK_CHARS);
            assert_eq!(record.id, format!("hours.txt#{}", n + 1));
            assert_eq!(record.title.as_deref(), Some("hours"));
        }
    }

    #[test]
    fn nul_characters_are_stripped_everywhere() {
        let parsed = guide("# T\0itle\n\nBo\0dy.\n");
        assert_eq!(parsed.records[0].title.as_deref(), Some("Title"));
        assert_eq!(parsed.records[0].text, "Body.");
        let lines = parse(
            Format::JsonLines,
            "n.jsonl",
            "{\"text\": \"a\\u0000b\", \"category\": \"c\\u0000\"}\n",
        )
        .expect("parsed");
        assert_eq!(lines.records[0].text, "ab");
        assert_eq!(lines.records[0].category.as_deref(), Some("c"));
    }

    #[test]
    fn fixing_a_bad_json_line_keeps_the_other_ids() {
        let before = parse(
            Format::JsonLines,
            "j.jsonl",
            "{\"text\": \"a\"}\n{oops\n\n{\"text\": \"c\"}\n",
        )
        .expect("parsed");
        let after = parse(
            Format::JsonLines,
            "j.jsonl",
            "{\"text\": \"a\"}\n{\"text\": \"b\"}\n\n{\"text\": \"c\"}\n",
        )
        .expect("parsed");
        assert_eq!(
            before.bad_rows,
            [BadRow {
                line: 2,
                reason: before.bad_rows[0].reason.clone()
            }]
        );
        assert_eq!(before.records[1].id, "j.jsonl#4");
        assert_eq!(before.records[1].id, after.records[2].id);
    }
}
