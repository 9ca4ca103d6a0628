//! A first pass over one YAML file with libyaml's event parser (the parser serde_yaml_ng wraps, so both agree on
//! what is YAML) that builds nothing: it finds where each document lies in the text and refuses what would cost
//! too much to build, before any value is made.
//!
//! Why a pass of its own: serde_yaml_ng's multi-document iterator never gets past a syntax error (after one, its
//! libyaml parser returns the same error on every call, and the iterator yields a new failing document each
//! time, for ever: 100 % CPU and an error list that grows until the process is killed). Here the file's reading
//! stops at the first syntax error, and each good document is handed to serde_yaml_ng alone, as its own text.
//!
//! What it refuses:
//! - nesting deeper than [`MAX_DEPTH`]: libyaml keeps a few stack entries per open level, so a file of `[[[[...`
//!   costs memory in proportion to its size; the pass stops reading the file at the first level too deep.
//! - aliases (`*name`, and so `<<: *name` merge keys), always, rather than expanding them within a budget: a
//!   handful of aliases expands into billions of nodes ("billion laughs"), and Kubernetes objects (what
//!   kubectl, Helm and Kustomize write) never need them. A document with an alias is refused alone; the pass
//!   goes on with the next one. Anchors without aliases cost nothing and are let through.
use std::{ffi::CStr, fmt, marker::PhantomData, mem::MaybeUninit};

/// Deeper than any Kubernetes or Istio object (a DestinationRule's deepest field is about 10 levels down).
pub const MAX_DEPTH: usize = 64;

/// Where, in a file, 1-based as editors count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn of(mark: unsafe_libyaml::yaml_mark_t) -> Position {
        Position { line: mark.line + 1, column: mark.column + 1 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// Not YAML from here on: libyaml's own words (`problem`, and what it was reading when it met it).
    #[error("not YAML: {problem} at {at}{}", context.as_ref().map(|(c, p)| format!(", {c} at {p}")).unwrap_or_default())]
    Syntax { at: Position, problem: String, context: Option<(String, Position)> },
    #[error("nested more than {MAX_DEPTH} levels deep at {at}")]
    TooDeep { at: Position },
    #[error("YAML alias at {at}: keel-control does not expand aliases (write the value out in full)")]
    Alias { at: Position },
}

/// One document of the file: its own text, or why it is refused.
#[derive(Debug, PartialEq)]
pub struct Document<'a> {
    pub text: Result<&'a str, ScanError>,
}

/// What the pass found: the documents read, then, if the file's reading stopped early, why (the error lies in
/// document `documents.len() + 1`).
#[derive(Debug, Default, PartialEq)]
pub struct Scanned<'a> {
    pub documents: Vec<Document<'a>>,
    pub stopped: Option<ScanError>,
}

pub fn scan(text: &str) -> Scanned<'_> {
    let mut scanned = Scanned::default();
    let mut parser = Parser::new(text);
    let mut start = 0;
    let mut depth = 0usize;
    let mut refused = None;
    loop {
        let event = match parser.next() {
            Ok(event) => event,
            Err(e) => {
                scanned.stopped = Some(e);
                return scanned;
            }
        };
        match event.kind {
            // No event: libyaml has nothing more to give (it never should before the stream's end; never spin on it).
            unsafe_libyaml::YAML_STREAM_END_EVENT | unsafe_libyaml::YAML_NO_EVENT => return scanned,
            unsafe_libyaml::YAML_DOCUMENT_START_EVENT => {
                (start, depth, refused) = (event.start.index, 0, None);
            }
            unsafe_libyaml::YAML_DOCUMENT_END_EVENT => {
                let text = match refused.take() {
                    Some(e) => Err(e),
                    // Marks are byte offsets into the UTF-8 input; `get` keeps a wrong one from panicking.
                    None => text.get(start as usize..event.end.index as usize).ok_or_else(|| ScanError::Syntax {
                        at: Position::of(event.end),
                        problem: "document boundary inside a character".into(),
                        context: None,
                    }),
                };
                scanned.documents.push(Document { text });
            }
            unsafe_libyaml::YAML_SEQUENCE_START_EVENT | unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > MAX_DEPTH {
                    scanned.stopped = Some(ScanError::TooDeep { at: Position::of(event.start) });
                    return scanned;
                }
            }
            unsafe_libyaml::YAML_SEQUENCE_END_EVENT | unsafe_libyaml::YAML_MAPPING_END_EVENT => depth = depth.saturating_sub(1),
            unsafe_libyaml::YAML_ALIAS_EVENT => {
                refused.get_or_insert(ScanError::Alias { at: Position::of(event.start) });
            }
            _ => {}
        }
    }
}

/// What the pass needs of one libyaml event (the event itself is freed at once).
struct Event {
    kind: unsafe_libyaml::yaml_event_type_t,
    start: unsafe_libyaml::yaml_mark_t,
    end: unsafe_libyaml::yaml_mark_t,
}

/// libyaml's parser over a borrowed text. Boxed: libyaml keeps a pointer to the parser inside the parser.
struct Parser<'a> {
    sys: Box<MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    _input: PhantomData<&'a str>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Parser<'a> {
        let mut sys = Box::new(MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
        let parser = sys.as_mut_ptr();
        // SAFETY: `parser` points to memory owned by the box, which never moves; libyaml initializes it (failing
        // only when out of memory, as serde_yaml_ng also treats it). The input outlives the parser (`'a`), and
        // `Drop` frees what libyaml allocated.
        unsafe {
            assert!(unsafe_libyaml::yaml_parser_initialize(parser).ok, "libyaml: out of memory");
            unsafe_libyaml::yaml_parser_set_encoding(parser, unsafe_libyaml::YAML_UTF8_ENCODING);
            unsafe_libyaml::yaml_parser_set_input_string(parser, input.as_ptr(), input.len() as u64);
        }
        Parser { sys, _input: PhantomData }
    }

    fn next(&mut self) -> Result<Event, ScanError> {
        let parser = self.sys.as_mut_ptr();
        let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: the parser was initialized in `new`. libyaml fills `event` only when it succeeds; then the
        // fields read are plain values, and `yaml_event_delete` frees the event's strings before it goes.
        unsafe {
            if unsafe_libyaml::yaml_parser_parse(parser, event.as_mut_ptr()).fail {
                return Err(syntax_error(&*parser));
            }
            let event = event.as_mut_ptr();
            let seen = Event { kind: (*event).type_, start: (*event).start_mark, end: (*event).end_mark };
            unsafe_libyaml::yaml_event_delete(event);
            Ok(seen)
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, deleted once.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

/// # Safety
/// `parser` is an initialized libyaml parser whose last call failed.
unsafe fn syntax_error(parser: &unsafe_libyaml::yaml_parser_t) -> ScanError {
    // SAFETY: libyaml's problem and context are null or static NUL-terminated strings.
    let text = |s: *const std::ffi::c_char| (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned());
    ScanError::Syntax {
        at: Position::of(parser.problem_mark),
        problem: text(parser.problem).unwrap_or_else(|| "libyaml failed without saying why".into()),
        context: text(parser.context).map(|c| (c, Position::of(parser.context_mark))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(scanned: &Scanned<'a>) -> Vec<Result<&'a str, ScanError>> {
        scanned.documents.iter().map(|d| d.text.clone()).collect()
    }

    #[test]
    fn splits_a_file_into_the_text_of_each_document() {
        let scanned = scan("a: 1\n---\nb: [2]\n...\n---\n# only a comment\n");
        assert_eq!(scanned.stopped, None);
        let texts = texts(&scanned);
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert_eq!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(texts[0].clone().unwrap()).unwrap()["a"], 1);
        assert_eq!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(texts[1].clone().unwrap()).unwrap()["b"][0], 2);
        assert!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(texts[2].clone().unwrap()).unwrap().is_null());
        assert_eq!(scan("").documents, [], "an empty file has no documents");
    }

    #[test]
    fn stops_at_a_syntax_error_with_its_position_keeping_the_documents_before() {
        let scanned = scan("a: 1\n---\nx: [{a: 1]\n---\nc: 3\n");
        assert_eq!(scanned.documents.len(), 1);
        let error = scanned.stopped.unwrap();
        let ScanError::Syntax { at, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*at, Position { line: 3, column: 10 });
        assert!(error.to_string().starts_with("not YAML: did not find expected ',' or '}' at line 3 column 10"), "{error}");
    }

    #[test]
    fn refuses_nesting_beyond_the_limit_and_reads_no_further() {
        let deep = |levels: usize| "[".repeat(levels) + &"]".repeat(levels) + "\n";
        assert_eq!(scan(&deep(MAX_DEPTH)).stopped, None);
        let text = format!("a: 1\n---\n{}---\nb: 2\n", deep(MAX_DEPTH + 1));
        let scanned = scan(&text);
        assert_eq!(scanned.documents.len(), 1);
        assert_eq!(scanned.stopped, Some(ScanError::TooDeep { at: Position { line: 3, column: MAX_DEPTH as u64 + 1 } }));
        // Block style counts the same.
        let block: String = (0..=MAX_DEPTH).map(|level| format!("{}k:\n", "  ".repeat(level))).collect();
        assert!(matches!(scan(&block).stopped, Some(ScanError::TooDeep { .. })));
    }

    #[test]
    fn refuses_a_document_with_an_alias_and_reads_the_next() {
        let scanned = scan("a: &x [1]\n---\na: &x [1]\nb: *x\n---\nc: 3\n");
        assert_eq!(scanned.stopped, None);
        let texts = texts(&scanned);
        assert!(texts[0].is_ok(), "an anchor alone costs nothing");
        assert_eq!(texts[1], Err(ScanError::Alias { at: Position { line: 4, column: 4 } }));
        assert!(texts[2].is_ok());
    }
}
