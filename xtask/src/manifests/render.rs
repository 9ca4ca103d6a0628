//! Documents to YAML text: keys in reading order, the header and notes as comments, and (for the chart) Helm
//! expressions in place of the values an installer may change.

use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};
use thiserror::Error;

use super::document::{Document, Note};

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("{document}: cannot serialize: {source}")]
    Serialize {
        document: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{document}: the chart's value {expr} has no place at {path}: no such field")]
    SlotNotFound { document: String, expr: String, path: String },
    #[error("{document}: a note is meant for line {nth} of `{line}`, which the document does not have")]
    NoteNotFound { document: String, line: String, nth: usize },
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    /// The item of a list whose `name` is this (containers, volumes).
    Named(String),
}

impl From<&str> for Segment {
    fn from(key: &str) -> Segment {
        Segment::Key(key.to_owned())
    }
}

fn path_text(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => format!(".{k}"),
            Segment::Named(n) => format!("[name={n}]"),
        })
        .collect()
}

/// How a Helm expression replaces a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStyle {
    /// A scalar: `key: {{ expr }}`.
    Inline,
    /// A structure: `key:` then `{{- toYaml expr | nindent N }}`.
    Block,
}

/// A value of one document that the chart takes from `.Values`.
#[derive(Debug, Clone)]
pub struct Slot {
    pub kind: &'static str,
    pub name: &'static str,
    pub path: Vec<Segment>,
    /// The Helm expression, e.g. `.Values.control.replicas`.
    pub expr: &'static str,
    pub style: SlotStyle,
}

/// Comment lines are wrapped to this width (the repository's line width is 150; YAML reads better narrower).
const COMMENT_WIDTH: usize = 116;

/// A multi-document YAML file: `file_header` comment lines, then the documents separated by `---` (the header
/// belongs to the first document, so that no document is only a comment).
pub fn manifest_file(file_header: &[&str], documents: &[Document], slots: Option<&[Slot]>) -> Result<String, RenderError> {
    let mut out = String::new();
    for line in file_header {
        push_comment(&mut out, "", line);
    }
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        } else if !file_header.is_empty() {
            out.push_str("#\n");
        }
        out.push_str(&render_document(document, slots.unwrap_or_default())?);
    }
    Ok(out)
}

/// One document: header comments, then the object with its notes.
pub fn render_document(document: &Document, slots: &[Slot]) -> Result<String, RenderError> {
    let id = document.id();
    let mut value = document.object.to_yaml_value().map_err(|source| RenderError::Serialize { document: id.clone(), source })?;
    value = reading_order(value);
    let mine: Vec<&Slot> = slots.iter().filter(|s| s.kind == document.object.kind() && s.name == document.object.name()).collect();
    for (i, slot) in mine.iter().enumerate() {
        let place = find_mut(&mut value, &slot.path).ok_or_else(|| RenderError::SlotNotFound {
            document: id.clone(),
            expr: slot.expr.to_owned(),
            path: path_text(&slot.path),
        })?;
        *place = Value::String(marker(i));
    }
    let body = serde_yaml_ng::to_string(&value).map_err(|source| RenderError::Serialize { document: id.clone(), source })?;
    let body = replace_markers(&body, &mine);
    let body = insert_notes(&body, &document.notes).map_err(|note| RenderError::NoteNotFound { document: id, line: note.line, nth: note.nth })?;
    let mut out = String::new();
    for (i, paragraph) in document.header.iter().enumerate() {
        if i > 0 {
            out.push_str("#\n");
        }
        push_comment(&mut out, "", paragraph);
    }
    out.push_str(&body);
    Ok(out)
}

/// A plain YAML file (values.yaml): `file_header` comment lines, then `value` with a comment above each `(line, text)`.
pub fn values_file(file_header: &[&str], value: &impl serde::Serialize, notes: &[(&str, &str)]) -> Result<String, RenderError> {
    let document = "values.yaml".to_owned();
    let body = serde_yaml_ng::to_string(value).map_err(|source| RenderError::Serialize { document: document.clone(), source })?;
    let notes: Vec<Note> = notes.iter().map(|(line, text)| Note::above(*line, *text)).collect();
    let body = insert_notes(&body, &notes).map_err(|note| RenderError::NoteNotFound { document, line: note.line, nth: note.nth })?;
    let mut out = String::new();
    for line in file_header {
        push_comment(&mut out, "", line);
    }
    out.push_str(&body);
    Ok(out)
}

fn marker(i: usize) -> String {
    format!("__helm_slot_{i}__")
}

/// apiVersion, kind, metadata first; `name` and `namespace` first in any mapping; everything else in k8s-openapi's
/// (alphabetical) order.
fn reading_order(value: Value) -> Value {
    const FIRST: [&str; 5] = ["apiVersion", "kind", "metadata", "name", "namespace"];
    match value {
        Value::Mapping(map) => {
            let mut entries: Vec<(Value, Value)> = map.into_iter().map(|(k, v)| (k, reading_order(v))).collect();
            entries.sort_by_key(|(k, _)| k.as_str().and_then(|k| FIRST.iter().position(|f| *f == k)).unwrap_or(FIRST.len()));
            Value::Mapping(entries.into_iter().collect::<Mapping>())
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(reading_order).collect()),
        other => other,
    }
}

fn find_mut<'v>(value: &'v mut Value, path: &[Segment]) -> Option<&'v mut Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let next = match first {
        Segment::Key(key) => value.as_mapping_mut()?.get_mut(key.as_str())?,
        Segment::Named(name) => value.as_sequence_mut()?.iter_mut().find(|item| item.get("name").and_then(Value::as_str) == Some(name))?,
    };
    find_mut(next, rest)
}

/// Turns each `key: __helm_slot_N__` line into its Helm form.
fn replace_markers(body: &str, slots: &[&Slot]) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        let found = slots.iter().enumerate().find(|(i, _)| line.ends_with(&format!(": {}", marker(*i))));
        match found {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some((i, slot)) => {
                let head = &line[..line.len() - marker(i).len() - 1];
                match slot.style {
                    SlotStyle::Inline => {
                        let _ = writeln!(out, "{head} {{{{ {} }}}}", slot.expr);
                    }
                    SlotStyle::Block => {
                        // The key's column: after the indentation and a list item's "- ".
                        let indent = line.len() - line.trim_start().len();
                        let key_column = if line.trim_start().starts_with("- ") { indent + 2 } else { indent };
                        let nested = key_column + 2;
                        let _ = writeln!(out, "{head}\n{:nested$}{{{{- toYaml {} | nindent {nested} }}}}", "", slot.expr);
                    }
                }
            }
        }
    }
    out
}

/// Puts each note's comment above its line, at that line's indentation.
fn insert_notes(body: &str, notes: &[Note]) -> Result<String, Note> {
    let lines: Vec<&str> = body.lines().collect();
    let mut above: Vec<Vec<&Note>> = vec![Vec::new(); lines.len()];
    for note in notes {
        let index = lines.iter().enumerate().filter(|(_, l)| l.trim() == note.line).map(|(i, _)| i).nth(note.nth).ok_or_else(|| note.clone())?;
        above[index].push(note);
    }
    let mut out = String::with_capacity(body.len() * 2);
    for (line, notes) in lines.iter().zip(above) {
        let indent = &line[..line.len() - line.trim_start().len()];
        for note in notes {
            push_comment(&mut out, indent, &note.text);
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// `text` as `# ` lines at `indent`, wrapped at word boundaries.
fn push_comment(out: &mut String, indent: &str, text: &str) {
    if text.is_empty() {
        let _ = writeln!(out, "{indent}#");
        return;
    }
    let width = COMMENT_WIDTH.saturating_sub(indent.len() + 2).max(40);
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{indent}# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{indent}# {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_wrap_at_word_boundaries_and_keep_indentation() {
        let mut out = String::new();
        let text = "word ".repeat(40);
        push_comment(&mut out, "    ", &text);
        assert!(out.lines().count() > 1, "{out}");
        for line in out.lines() {
            assert!(line.starts_with("    # word"), "{line:?}");
            assert!(line.len() <= COMMENT_WIDTH, "{line:?}");
        }
    }

    #[test]
    fn a_note_whose_line_is_missing_is_an_error() {
        let body = "a: 1\nb:\n- c\n- c\n";
        let notes = [Note::above_nth("- c", 1, "second"), Note::above("b:", "bee")];
        assert_eq!(insert_notes(body, &notes).unwrap(), "a: 1\n# bee\nb:\n- c\n# second\n- c\n");
        let missing = Note::above_nth("- c", 2, "third");
        assert_eq!(insert_notes(body, std::slice::from_ref(&missing)), Err(missing));
    }

    #[test]
    fn block_slots_nest_under_their_key_and_inline_slots_stay_on_the_line() {
        let block = Slot { kind: "K", name: "n", path: vec![], expr: ".Values.r", style: SlotStyle::Block };
        let inline = Slot { kind: "K", name: "n", path: vec![], expr: ".Values.n", style: SlotStyle::Inline };
        let body = "spec:\n  replicas: __helm_slot_1__\n  containers:\n  - resources: __helm_slot_0__\n    name: x\n";
        assert_eq!(
            replace_markers(body, &[&block, &inline]),
            "spec:\n  replicas: {{ .Values.n }}\n  containers:\n  - resources:\n      {{- toYaml .Values.r | nindent 6 }}\n    name: x\n"
        );
    }
}
