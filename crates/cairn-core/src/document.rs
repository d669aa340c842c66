//! Reading a plan file (YAML or JSON) into a JSON value while remembering where each key and
//! value stood, so every fault found later can name its line and column.
//!
//! YAML is read from the parser's events rather than through serde, because serde stops at the
//! first fault and forgets positions. Scalars follow the YAML 1.2 core schema (`3` is a number,
//! `true` a boolean, `~` null), except where the plan wants text: a plain scalar filling a
//! string field (`plan_id`, `query`, `step_id`, `action`, `agent_type`, `when`, the entries of
//! `depends_on`) is kept as written, so `action: 1` is the string `"1"`.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};

/// A line and column, both counted from 1 (columns in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A document as a JSON value, with positions by path. A path is the keys and list indexes from
/// the root joined by `/` (`steps/2/retry/max_attempts`); the root is the empty path.
#[derive(Debug, Default)]
pub(crate) struct Located {
    /// Where each value starts.
    values: HashMap<String, Pos>,
    /// Where the key of each mapping entry stands.
    keys: HashMap<String, Pos>,
}

impl Located {
    /// Where the value at `path` starts, or else the nearest enclosing value that has a position.
    pub fn value(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return None,
            }
        }
    }

    /// Where the key of the entry at `path` stands (for an unknown field).
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

/// A document that could not be read: the parser's message and where it stopped.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub pos: Option<Pos>,
}

/// Aliases may not expand a document past this many nodes (a "billion laughs" file stops here).
const MAX_NODES: usize = 1_000_000;

/// Deepest nesting of lists and mappings read (serde_json's own limit for JSON).
const MAX_DEPTH: usize = 128;

/// Is the value at `path` a field whose plain scalars are text whatever they look like?
fn wants_text(path: &[String]) -> bool {
    match path {
        [k] => k == "plan_id" || k == "query",
        [s, _, k] if s == "steps" => {
            matches!(k.as_str(), "step_id" | "action" | "agent_type" | "when")
        }
        [s, _, d, _] if s == "steps" && d == "depends_on" => true,
        _ => false,
    }
}

/// Reads a YAML document.
pub(crate) fn yaml(text: &str) -> Result<(Value, Located), SyntaxError> {
    let mut reader = YamlReader {
        text,
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        located: Located::default(),
        path: Vec::new(),
        nodes: 0,
    };
    reader.document()
}

struct YamlReader<'a> {
    text: &'a str,
    parser: Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
    anchors: HashMap<usize, Value>,
    located: Located,
    path: Vec<String>,
    nodes: usize,
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u32,
        column: span.start.col() as u32 + 1,
    }
}

impl<'a> YamlReader<'a> {
    /// The next event that is not a comment.
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, SyntaxError> {
        loop {
            match self.parser.next_event() {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.scan_error(&e)),
                Some(Ok((event, span))) => {
                    if matches!(
                        event,
                        Event::StreamStart
                            | Event::Anchor(..)
                            | Event::DocumentEnd
                            | Event::Comment(..)
                    ) {
                        continue;
                    }
                    return Ok(Some((event, span)));
                }
            }
        }
    }

    /// A scanner error, moved onto the tab when a tab is what went wrong: the scanner reports
    /// the start of the token it was reading, often on the line before.
    fn scan_error(&self, e: &ScanError) -> SyntaxError {
        let marker = e.marker();
        let mut pos = Pos {
            line: marker.line() as u32,
            column: marker.col() as u32 + 1,
        };
        let info = e.info();
        if info.contains("tab") {
            let from = marker.byte_offset().unwrap_or(0).min(self.text.len());
            if let Some(at) = self.text.get(from..).and_then(|t| t.find('\t')) {
                pos = position_at(self.text, from + at);
            }
        }
        SyntaxError {
            message: info,
            pos: Some(pos),
        }
    }

    fn document(&mut self) -> Result<(Value, Located), SyntaxError> {
        let mut value = Value::Null;
        let mut seen_document = false;
        while let Some((event, span)) = self.next()? {
            match event {
                Event::StreamEnd => break,
                Event::DocumentStart(..) => {
                    if seen_document {
                        return Err(SyntaxError {
                            message:
                                "a plan file holds one YAML document; a second one starts here"
                                    .into(),
                            pos: Some(pos_of(&span)),
                        });
                    }
                    seen_document = true;
                    value = match self.next()? {
                        Some((Event::StreamEnd, _)) | None => Value::Null,
                        Some((event, span)) => self.node(event, span)?,
                    };
                }
                other => {
                    return Err(SyntaxError {
                        message: format!("unexpected YAML event {other:?}"),
                        pos: Some(pos_of(&span)),
                    })
                }
            }
        }
        Ok((value, std::mem::take(&mut self.located)))
    }

    fn here(&self) -> String {
        self.path.join("/")
    }

    fn count(&mut self, n: usize, span: &Span) -> Result<(), SyntaxError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                message: format!("the document expands to more than {MAX_NODES} values"),
                pos: Some(pos_of(span)),
            });
        }
        Ok(())
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Value, SyntaxError> {
        if self.path.len() > MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("lists and mappings are nested deeper than {MAX_DEPTH} levels"),
                pos: Some(pos_of(&span)),
            });
        }
        self.located.values.insert(self.here(), pos_of(&span));
        self.count(1, &span)?;
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let core = tag
                    .as_ref()
                    .and_then(|t| t.core_suffix().map(str::to_owned));
                let value = match (style, core.as_deref()) {
                    (_, Some("str")) => Value::String(text.into_owned()),
                    (ScalarStyle::Plain, None) if wants_text(&self.path) => {
                        Value::String(text.into_owned())
                    }
                    (ScalarStyle::Plain, _) | (_, Some("int" | "float" | "bool" | "null")) => {
                        resolve(&text)
                    }
                    _ => Value::String(text.into_owned()),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                Ok(value)
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.count(size(&value), &span)?;
                Ok(value)
            }
            Event::SequenceStart(_, anchor, _) => {
                let mut items = Vec::new();
                while let Some((event, span)) = self.next()? {
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    self.path.push(items.len().to_string());
                    let item = self.node(event, span);
                    self.path.pop();
                    items.push(item?);
                }
                let value = Value::Array(items);
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                Ok(value)
            }
            Event::MappingStart(_, anchor, _) => {
                let mut map = Map::new();
                let mut merged = Map::new();
                while let Some((event, key_span)) = self.next()? {
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let is_merge =
                        matches!(&event, Event::Scalar(k, ScalarStyle::Plain, ..) if k == "<<");
                    let key = match event {
                        Event::Scalar(k, ..) => k.into_owned(),
                        _ => {
                            return Err(SyntaxError {
                                message:
                                    "a mapping key must be a plain value, not a list or mapping"
                                        .into(),
                                pos: Some(pos_of(&key_span)),
                            })
                        }
                    };
                    let Some((event, span)) = self.next()? else {
                        break;
                    };
                    self.path.push(key.clone());
                    let entry = self.here();
                    let value = self.node(event, span);
                    self.path.pop();
                    let value = value?;
                    if is_merge {
                        // `<<: *base` (or a list of them): keys the mapping does not set itself.
                        let sources = match value {
                            Value::Array(items) => items,
                            other => vec![other],
                        };
                        for source in sources {
                            if let Value::Object(m) = source {
                                for (k, v) in m {
                                    merged.entry(k).or_insert(v);
                                }
                            }
                        }
                        continue;
                    }
                    if map.contains_key(&key) {
                        return Err(SyntaxError {
                            message: format!("duplicate key `{key}`"),
                            pos: Some(pos_of(&key_span)),
                        });
                    }
                    self.located.keys.insert(entry, pos_of(&key_span));
                    map.insert(key, value);
                }
                for (k, v) in merged {
                    map.entry(k).or_insert(v);
                }
                let value = Value::Object(map);
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                Ok(value)
            }
            other => Err(SyntaxError {
                message: format!("unexpected YAML event {other:?}"),
                pos: Some(pos_of(&span)),
            }),
        }
    }
}

/// How many values a value holds, itself included.
fn size(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

/// A plain scalar under the YAML 1.2 core schema.
fn resolve(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let int = |digits: &str, radix: u32| -> Option<Value> {
        let (negative, digits) = match digits.as_bytes().first() {
            Some(b'-') => (true, &digits[1..]),
            Some(b'+') => (false, &digits[1..]),
            _ => (false, digits),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        let n = i128::from_str_radix(digits, radix).ok()?;
        let n = if negative { -n } else { n };
        u64::try_from(n)
            .map(Value::from)
            .ok()
            .or_else(|| i64::try_from(n).ok().map(Value::from))
    };
    if let Some(v) = text
        .strip_prefix("0x")
        .and_then(|h| int(h, 16))
        .or_else(|| text.strip_prefix("0o").and_then(|o| int(o, 8)))
        .or_else(|| int(text, 10))
    {
        return v;
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_owned())
}

/// The line and column of byte `at` of `text`.
fn position_at(text: &str, at: usize) -> Pos {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line: before.matches('\n').count() as u32 + 1,
        column: before[line_start..].chars().count() as u32 + 1,
    }
}

/// Reads a JSON document. Duplicate keys are refused: which one would win is not obvious.
pub(crate) fn json(text: &str) -> Result<(Value, Located), SyntaxError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SyntaxError {
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or("")
            .to_owned(),
        pos: (e.line() > 0).then(|| Pos {
            line: e.line() as u32,
            column: e.column() as u32,
        }),
    })?;
    let mut scanner = JsonScanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
        located: Located::default(),
        path: Vec::new(),
    };
    scanner.value()?;
    Ok((value, scanner.located))
}

/// Walks JSON text that serde_json has already accepted, noting where keys and values start.
struct JsonScanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    located: Located,
    path: Vec<String>,
}

impl JsonScanner<'_> {
    fn skip_ws(&mut self) {
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    /// The string starting at the current `"`, decoded, with the scanner moved past it.
    fn string(&mut self) -> String {
        let start = self.at;
        self.at += 1;
        while self.at < self.bytes.len() {
            match self.bytes[self.at] {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        serde_json::from_str(&self.text[start..self.at.min(self.text.len())]).unwrap_or_default()
    }

    fn value(&mut self) -> Result<(), SyntaxError> {
        self.skip_ws();
        self.located
            .values
            .insert(self.path.join("/"), position_at(self.text, self.at));
        match self.bytes.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut seen = std::collections::HashSet::new();
                loop {
                    self.skip_ws();
                    match self.bytes.get(self.at) {
                        Some(b'}') | None => {
                            self.at += 1;
                            return Ok(());
                        }
                        Some(b',') => {
                            self.at += 1;
                            continue;
                        }
                        _ => {}
                    }
                    let key_pos = position_at(self.text, self.at);
                    let key = self.string();
                    if !seen.insert(key.clone()) {
                        return Err(SyntaxError {
                            message: format!("duplicate key `{key}`"),
                            pos: Some(key_pos),
                        });
                    }
                    self.skip_ws();
                    self.at += 1; // the colon
                    self.path.push(key);
                    self.located.keys.insert(self.path.join("/"), key_pos);
                    let r = self.value();
                    self.path.pop();
                    r?;
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut i = 0usize;
                loop {
                    self.skip_ws();
                    match self.bytes.get(self.at) {
                        Some(b']') | None => {
                            self.at += 1;
                            return Ok(());
                        }
                        Some(b',') => {
                            self.at += 1;
                            continue;
                        }
                        _ => {}
                    }
                    self.path.push(i.to_string());
                    let r = self.value();
                    self.path.pop();
                    r?;
                    i += 1;
                }
            }
            Some(b'"') => {
                self.string();
                Ok(())
            }
            _ => {
                while self.at < self.bytes.len()
                    && !matches!(self.bytes[self.at], b',' | b'}' | b']')
                    && !self.bytes[self.at].is_ascii_whitespace()
                {
                    self.at += 1;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_scalars_follow_the_core_schema_except_in_text_fields() {
        let (v, _) = yaml(
            "plan_id: 001\nquery: true\nmax_parallel: 4\nmetadata: {a: 1.5, b: ~, c: yes, d: '3', e: 0x10}\nsteps:\n  - {step_id: 1, action: 2, depends_on: [3]}\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"plan_id": "001", "query": "true", "max_parallel": 4,
                "metadata": {"a": 1.5, "b": null, "c": "yes", "d": "3", "e": 16},
                "steps": [{"step_id": "1", "action": "2", "depends_on": ["3"]}]})
        );
    }

    #[test]
    fn positions_of_keys_and_values() {
        let text = "steps:\n  - step_id: a\n    retry:\n      max_attempt: 3\n";
        let (_, at) = yaml(text).unwrap();
        assert_eq!(
            at.key("steps/0/retry/max_attempt"),
            Some(Pos { line: 4, column: 7 })
        );
        assert_eq!(
            at.value("steps/0/step_id"),
            Some(Pos {
                line: 2,
                column: 14
            })
        );
        assert_eq!(
            at.value("steps/0/nothing/here"),
            Some(Pos { line: 2, column: 5 })
        );
        let text = "{\n  \"steps\": [\n    {\"step_id\": \"a\", \"colour\": 1}\n  ]\n}";
        let (_, at) = json(text).unwrap();
        assert_eq!(
            at.key("steps/0/colour"),
            Some(Pos {
                line: 3,
                column: 22
            })
        );
        assert_eq!(
            at.value("steps/0/colour"),
            Some(Pos {
                line: 3,
                column: 32
            })
        );
    }

    #[test]
    fn anchors_merges_and_duplicates() {
        let (v, _) = yaml("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(v["use"], json!({"y": 3, "x": 1}));
        let e = yaml("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.message, "duplicate key `a`");
        assert_eq!(e.pos, Some(Pos { line: 2, column: 1 }));
        let e = json("{\"a\": 1,\n \"a\": 2}").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, column: 2 }));
    }

    #[test]
    fn hostile_documents_are_refused_not_crashed_on() {
        assert!(yaml(&"[".repeat(100_000)).is_err());
        assert!(yaml(&"- ".repeat(100_000)).is_err());
        assert!(json(&"[".repeat(100_000)).is_err());
        // Aliases that would expand a thousand times over, nine times: refused by size.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb += &format!("a{i}: &a{i} [{refs}]\n");
        }
        let e = yaml(&bomb).unwrap_err();
        assert!(e.message.contains("expands to more than"), "{}", e.message);
    }

    #[test]
    fn a_tab_error_points_at_the_tab() {
        let e = yaml("steps:\n  - step_id: s1\n\taction: x\n").unwrap_err();
        assert!(e.message.contains("tab"), "{}", e.message);
        assert_eq!(e.pos, Some(Pos { line: 3, column: 1 }));
    }
}
