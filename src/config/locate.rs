//! Where a byte offset falls in a TOML file: its line, its column, and the key written there
//! (`server.max_connections`, `upstream[1].priority`). toml reports a type or schema error
//! by offset only; naming the key lets `ethgate check` say it as it says validation errors.

/// A position in the file, with the key it belongs to when one can be read off the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The key at that place as validation names keys, when the text shows one.
    pub key: Option<String>,
}

/// The place of byte `at` in `text` (clamped to the text).
pub(super) fn place(text: &str, at: usize) -> Place {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..at].matches('\n').count() + 1;
    let column = text[line_start..at].chars().count() + 1;
    Place {
        line,
        column,
        key: key_at(text.lines().take(line)),
    }
}

/// The key of the last of `lines`: its table, from the headers above it (an array of tables
/// counted as `name[i]`), and the name on the nearest `name = …` line at or above it (a
/// multi-line array's later lines belong to the key that opened it). On a header line, the
/// table itself.
fn key_at<'a>(lines: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut table: Option<String> = None;
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let mut name: Option<String> = None;
    for line in lines {
        let line = strip_comment(line).trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let header = header.trim().to_string();
            let index = match arrays.iter_mut().find(|(n, _)| *n == header) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    arrays.push((header.clone(), 1));
                    0
                }
            };
            table = Some(format!("{header}[{index}]"));
            name = None;
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = Some(header.trim().to_string());
            name = None;
        } else if let Some((key, _)) = line.split_once('=') {
            name = Some(key.trim().trim_matches('"').to_string());
        }
    }
    match (table, name) {
        (Some(table), Some(name)) => Some(format!("{table}.{name}")),
        (table, name) => table.or(name),
    }
}

/// A line without its `#` comment; a `#` inside a quoted string is kept.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, needle: &str) -> Option<String> {
        place(text, text.find(needle).expect("needle in text")).key
    }

    #[test]
    fn line_and_column_count_from_one_in_characters() {
        let text = "[server]\n# é\nmax = \"x\"\n";
        let at = text.find("\"x\"").unwrap();
        let place = place(text, at);
        assert_eq!((place.line, place.column), (3, 7));
        assert_eq!(super::place(text, 0).line, 1);
        assert_eq!(super::place(text, text.len() + 10).line, 4, "clamped");
        assert_eq!(super::place("é", 1).column, 1, "inside a character");
    }

    #[test]
    fn a_value_is_named_by_its_table_and_key() {
        let text = "[server]\nmax_connections = \"10\"\n";
        assert_eq!(key(text, "\"10\""), Some("server.max_connections".into()));
        assert_eq!(key("level = 3\n", "3"), Some("level".into()));
        let nested = "[server.tls]\ncert = 1 # a comment = x\n";
        assert_eq!(key(nested, "1"), Some("server.tls.cert".into()));
    }

    #[test]
    fn arrays_of_tables_are_counted() {
        let text = "[[upstream]]\nname = \"a\"\n[[upstream]]\nname = \"b\"\npriorty = 1\n\
                    [health]\n[[upstream]]\nname = \"c\"\n";
        assert_eq!(key(text, "priorty"), Some("upstream[1].priorty".into()));
        assert_eq!(key(text, "\"c\""), Some("upstream[2].name".into()));
    }

    #[test]
    fn a_header_names_its_table_and_a_continued_array_its_key() {
        let text = "[[upstream]]\nname = \"a\"\n[[upstream]]\nhttp = \"x\"\n";
        let second = text.rfind("[[upstream]]").unwrap();
        assert_eq!(place(text, second).key, Some("upstream[1]".into()));
        let array = "[server]\nlisten = [\n  \"a\",\n  3,\n]\n";
        assert_eq!(key(array, "3"), Some("server.listen".into()));
    }

    #[test]
    fn a_broken_header_or_an_empty_file_names_no_key() {
        assert_eq!(key("[server\n", "["), None);
        assert_eq!(place("", 0).key, None);
        assert_eq!(key("x = \"a # not a comment = y\"", "y"), Some("x".into()));
    }
}
