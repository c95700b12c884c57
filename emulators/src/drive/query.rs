//! The subset of Drive's search language (`q`) that a copy tool needs:
//!
//! - `'ID' in parents`
//! - `name = '...'`, `name != '...'`, `name contains '...'` (prefix of a word, any case, as Drive)
//! - `mimeType = '...'`, `mimeType != '...'`, `mimeType contains '...'`
//! - `trashed = true|false`, `starred = true|false` (and `!=`)
//! - `modifiedTime` / `createdTime` with `=`, `!=`, `<`, `<=`, `>`, `>=` and an RFC 3339 string
//! - `and`, `or`, `not`, parentheses; strings in single quotes with `\'` and `\\` escapes.
//!
//! Anything else (fullText, properties, sharedWithMe, ...) is refused as Drive refuses a
//! malformed query: 400 `invalid` on parameter `q`, so a client that needs more finds out
//! here and not in production.

use super::errors::ApiError;
use super::time;

/// Longest query accepted.
const QUERY_BYTES_MAX: usize = 16 << 10;
/// Deepest nesting of parentheses and `not`.
const DEPTH_MAX: usize = 32;

/// What a query looks at in a file.
pub(crate) struct Subject<'a> {
    pub(crate) name: &'a str,
    pub(crate) mime_type: &'a str,
    pub(crate) parents: &'a [String],
    pub(crate) trashed: bool,
    pub(crate) starred: bool,
    pub(crate) modified_ms: i64,
    pub(crate) created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextField {
    Name,
    MimeType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolField {
    Trashed,
    Starred,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeField {
    Modified,
    Created,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `'ID' in parents`.
    InParents(String),
    Text(TextField, Cmp, String),
    Bool(BoolField, bool, bool),
    Time(TimeField, Cmp, i64),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    /// Parses `q`.
    pub(crate) fn parse(q: &str) -> Result<Expr, ApiError> {
        if q.len() > QUERY_BYTES_MAX {
            return Err(invalid());
        }
        let tokens = lex(q)?;
        let mut p = Parser { t: &tokens, i: 0 };
        let e = p.or(0)?;
        if p.i != tokens.len() {
            return Err(invalid());
        }
        Ok(e)
    }

    /// Rewrites `'root' in parents` (and any other alias) to the real id.
    pub(crate) fn resolve_parents(&mut self, resolve: &dyn Fn(&str) -> String) {
        match self {
            Expr::InParents(id) => *id = resolve(id),
            Expr::And(v) | Expr::Or(v) => v.iter_mut().for_each(|e| e.resolve_parents(resolve)),
            Expr::Not(e) => e.resolve_parents(resolve),
            _ => {}
        }
    }

    /// A folder every match must be in, when the query says so at its top level (so a
    /// listing can walk that folder's children instead of every file).
    pub(crate) fn required_parent(&self) -> Option<&str> {
        match self {
            Expr::InParents(id) => Some(id),
            Expr::And(v) => v.iter().find_map(Expr::required_parent),
            _ => None,
        }
    }

    /// Whether `s` matches.
    pub(crate) fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Expr::InParents(id) => s.parents.iter().any(|p| p == id),
            Expr::Text(field, cmp, value) => {
                let text = match field {
                    TextField::Name => s.name,
                    TextField::MimeType => s.mime_type,
                };
                match cmp {
                    Cmp::Eq => text == value,
                    Cmp::Ne => text != value,
                    Cmp::Contains if *field == TextField::Name => name_contains(text, value),
                    Cmp::Contains => text.contains(value.as_str()),
                    _ => unreachable!("the parser allows only =, != and contains on text"),
                }
            }
            Expr::Bool(field, equal, value) => {
                let v = match field {
                    BoolField::Trashed => s.trashed,
                    BoolField::Starred => s.starred,
                };
                (v == *value) == *equal
            }
            Expr::Time(field, cmp, t) => {
                let v = match field {
                    TimeField::Modified => s.modified_ms,
                    TimeField::Created => s.created_ms,
                };
                match cmp {
                    Cmp::Eq => v == *t,
                    Cmp::Ne => v != *t,
                    Cmp::Lt => v < *t,
                    Cmp::Le => v <= *t,
                    Cmp::Gt => v > *t,
                    Cmp::Ge => v >= *t,
                    Cmp::Contains => unreachable!("the parser refuses contains on times"),
                }
            }
            Expr::And(v) => v.iter().all(|e| e.matches(s)),
            Expr::Or(v) => v.iter().any(|e| e.matches(s)),
            Expr::Not(e) => !e.matches(s),
        }
    }
}

/// Drive's `name contains`: a prefix of the name or of one of its words, any case
/// (`HelloWorld` matches `'hello'`, not `'World'`).
fn name_contains(name: &str, value: &str) -> bool {
    let name = name.to_lowercase();
    let value = value.to_lowercase();
    name.starts_with(&value)
        || name.match_indices(|c: char| !c.is_alphanumeric()).any(|(i, sep)| name[i + sep.len()..].starts_with(&value))
}

fn invalid() -> ApiError {
    ApiError::invalid_parameter("q", "Invalid Value")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Str(String),
    Word(String),
    Op(Cmp),
    Open,
    Close,
}

fn lex(q: &str) -> Result<Vec<Tok>, ApiError> {
    let mut out = Vec::new();
    let mut chars = q.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '\'' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e @ ('\'' | '\\'))) => s.push(e),
                            _ => return Err(invalid()),
                        },
                        Some((_, '\'')) => break,
                        Some((_, c)) => s.push(c),
                        None => return Err(invalid()),
                    }
                }
                out.push(Tok::Str(s));
            }
            '=' => out.push(Tok::Op(Cmp::Eq)),
            '!' if chars.peek().map(|p| p.1) == Some('=') => {
                chars.next();
                out.push(Tok::Op(Cmp::Ne));
            }
            '<' | '>' => {
                let eq = chars.peek().map(|p| p.1) == Some('=');
                if eq {
                    chars.next();
                }
                out.push(Tok::Op(match (c, eq) {
                    ('<', false) => Cmp::Lt,
                    ('<', true) => Cmp::Le,
                    ('>', false) => Cmp::Gt,
                    _ => Cmp::Ge,
                }));
            }
            c if c.is_ascii_alphabetic() => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !d.is_ascii_alphanumeric() {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                out.push(Tok::Word(q[i..end].to_string()));
            }
            _ => return Err(invalid()),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.t.get(self.i), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ApiError> {
        let mut v = vec![self.and(depth)?];
        while self.peek_word("or") {
            self.i += 1;
            v.push(self.and(depth)?);
        }
        Ok(if v.len() == 1 { v.pop().expect("one") } else { Expr::Or(v) })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ApiError> {
        let mut v = vec![self.unary(depth)?];
        while self.peek_word("and") {
            self.i += 1;
            v.push(self.unary(depth)?);
        }
        Ok(if v.len() == 1 { v.pop().expect("one") } else { Expr::And(v) })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ApiError> {
        if depth > DEPTH_MAX {
            return Err(invalid());
        }
        if self.peek_word("not") {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.t.get(self.i) == Some(&Tok::Open) {
            self.i += 1;
            let e = self.or(depth + 1)?;
            if self.t.get(self.i) != Some(&Tok::Close) {
                return Err(invalid());
            }
            self.i += 1;
            return Ok(e);
        }
        self.term()
    }

    fn term(&mut self) -> Result<Expr, ApiError> {
        let first = self.t.get(self.i).cloned().ok_or_else(invalid)?;
        self.i += 1;
        match first {
            Tok::Str(id) => {
                if self.peek_word("in") {
                    self.i += 1;
                    if matches!(self.t.get(self.i), Some(Tok::Word(w)) if w == "parents") {
                        self.i += 1;
                        return Ok(Expr::InParents(id));
                    }
                }
                Err(invalid())
            }
            Tok::Word(field) => {
                let cmp = match self.t.get(self.i) {
                    Some(Tok::Op(c)) => *c,
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("contains") => Cmp::Contains,
                    _ => return Err(invalid()),
                };
                self.i += 1;
                let value = self.t.get(self.i).cloned().ok_or_else(invalid)?;
                self.i += 1;
                match (field.as_str(), value) {
                    ("name", Tok::Str(v)) if matches!(cmp, Cmp::Eq | Cmp::Ne | Cmp::Contains) => {
                        Ok(Expr::Text(TextField::Name, cmp, v))
                    }
                    ("mimeType", Tok::Str(v)) if matches!(cmp, Cmp::Eq | Cmp::Ne | Cmp::Contains) => {
                        Ok(Expr::Text(TextField::MimeType, cmp, v))
                    }
                    (f @ ("trashed" | "starred"), Tok::Word(b)) if matches!(cmp, Cmp::Eq | Cmp::Ne) => {
                        let value = match b.as_str() {
                            "true" => true,
                            "false" => false,
                            _ => return Err(invalid()),
                        };
                        let field = if f == "trashed" { BoolField::Trashed } else { BoolField::Starred };
                        Ok(Expr::Bool(field, cmp == Cmp::Eq, value))
                    }
                    (f @ ("modifiedTime" | "createdTime"), Tok::Str(t)) if cmp != Cmp::Contains => {
                        let t = time::parse(&t).ok_or_else(invalid)?;
                        let field = if f == "modifiedTime" { TimeField::Modified } else { TimeField::Created };
                        Ok(Expr::Time(field, cmp, t))
                    }
                    _ => Err(invalid()),
                }
            }
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(name: &'a str, mime: &'a str, parents: &'a [String], trashed: bool) -> Subject<'a> {
        Subject { name, mime_type: mime, parents, trashed, starred: false, modified_ms: 1000, created_ms: 0 }
    }

    #[test]
    fn the_listing_query() {
        let q = Expr::parse("'abc' in parents and trashed = false").unwrap();
        assert_eq!(q.required_parent(), Some("abc"));
        let p = vec!["abc".to_string()];
        assert!(q.matches(&subject("x", "text/plain", &p, false)));
        assert!(!q.matches(&subject("x", "text/plain", &p, true)));
        assert!(!q.matches(&subject("x", "text/plain", &[], false)));
    }

    #[test]
    fn names_mimes_escapes_and_precedence() {
        let p: Vec<String> = vec![];
        let q = Expr::parse(r"name = 'it\'s a \\ file' or mimeType = 'application/vnd.google-apps.folder'").unwrap();
        assert!(q.matches(&subject(r"it's a \ file", "x", &p, false)));
        assert!(q.matches(&subject("other", "application/vnd.google-apps.folder", &p, false)));
        assert!(!q.matches(&subject("other", "x", &p, false)));
        assert_eq!(q.required_parent(), None, "an or does not pin a parent");
        // `and` binds tighter than `or`.
        let q = Expr::parse("name = 'a' or name = 'b' and trashed = true").unwrap();
        assert!(q.matches(&subject("a", "x", &p, false)));
        assert!(!q.matches(&subject("b", "x", &p, false)));
        let q = Expr::parse("not (name = 'a') AND mimeType != 'x'").unwrap();
        assert!(q.matches(&subject("b", "y", &p, false)));
        assert!(!q.matches(&subject("a", "y", &p, false)));
        let q = Expr::parse("name contains 'hello'").unwrap();
        assert!(q.matches(&subject("HelloWorld", "x", &p, false)));
        assert!(q.matches(&subject("say hello.txt", "x", &p, false)));
        assert!(!Expr::parse("name contains 'World'").unwrap().matches(&subject("HelloWorld", "x", &p, false)));
        let q = Expr::parse("modifiedTime > '1970-01-01T00:00:00.500Z'").unwrap();
        assert!(q.matches(&subject("a", "x", &p, false)));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "",
            "'abc' in parent",
            "name = abc",
            "name = 'unterminated",
            "fullText contains 'x'",
            "trashed = maybe",
            "trashed contains 'x'",
            "name = 'a' and",
            "(name = 'a'",
            "name > 'a'",
            "modifiedTime > 'yesterday'",
            r"name = 'bad \q escape'",
        ] {
            let e = Expr::parse(bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.reason), (400, "invalid"), "{bad:?}");
            assert_eq!(e.location, Some(("parameter", "q".to_string())));
        }
    }

    #[test]
    fn root_alias_resolves() {
        let mut q = Expr::parse("'root' in parents and trashed = false").unwrap();
        q.resolve_parents(&|id| if id == "root" { "0Aroot".to_string() } else { id.to_string() });
        assert_eq!(q.required_parent(), Some("0Aroot"));
    }
}
