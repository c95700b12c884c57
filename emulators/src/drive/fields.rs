//! Partial responses: the `fields` parameter (`nextPageToken, files(id,name,parents)`,
//! `user/emailAddress`, `*`), parsed into a mask and applied to a JSON resource.
//!
//! Drive refuses a selection that names a field its resource does not have (400
//! `invalidParameter`), so the emulator checks top-level names against the resource's
//! field list; names inside an object-valued field are not checked.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::errors::ApiError;

/// Longest `fields` value accepted (Drive's URLs are bounded too).
const FIELDS_BYTES_MAX: usize = 8 << 10;
/// Deepest nesting of parentheses.
const DEPTH_MAX: usize = 8;

/// A selection: each named field, with the selection inside it (None: all of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mask {
    fields: BTreeMap<String, Option<Mask>>,
}

impl Mask {
    /// Parses `fields`; `Err` carries the offending text.
    pub(crate) fn parse(text: &str) -> Result<Mask, ApiError> {
        if text.len() > FIELDS_BYTES_MAX {
            return Err(ApiError::invalid_fields(&text[..64]));
        }
        let mut p = Parser { s: text.as_bytes(), i: 0, text };
        let mask = p.list(0)?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(ApiError::invalid_fields(text));
        }
        Ok(mask)
    }

    /// A mask of these top-level names.
    pub(crate) fn of(names: &[&str]) -> Mask {
        Mask { fields: names.iter().map(|n| ((*n).to_string(), None)).collect() }
    }

    fn insert(&mut self, path: &[String], sub: Option<Mask>) {
        let (first, rest) = path.split_first().expect("a path has a name");
        if rest.is_empty() {
            match (self.fields.get_mut(first), sub) {
                // `a` and `a(b)`: all of a wins.
                (Some(slot), _) if slot.is_none() => {}
                (Some(slot), None) => *slot = None,
                (Some(Some(existing)), Some(new)) => {
                    for (k, v) in new.fields {
                        existing.insert(std::slice::from_ref(&k), v);
                    }
                }
                (_, sub) => {
                    self.fields.insert(first.clone(), sub);
                }
            }
            return;
        }
        let slot = self.fields.entry(first.clone()).or_insert_with(|| Some(Mask::default()));
        if let Some(inner) = slot {
            inner.insert(rest, sub);
        }
    }

    /// The selection inside `name`, if `name` is selected: Some(None) for all of it.
    pub(crate) fn get(&self, name: &str) -> Option<Option<&Mask>> {
        if let Some(v) = self.fields.get(name) {
            return Some(v.as_ref());
        }
        self.fields.contains_key("*").then_some(None)
    }

    /// Checks the top-level names against `known` (plus `*`).
    pub(crate) fn check(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.fields.keys().find(|k| k.as_str() != "*" && !known.contains(&k.as_str())) {
            Some(bad) => Err(ApiError::invalid_fields(bad)),
            None => Ok(()),
        }
    }

    /// Keeps what the mask selects.
    pub(crate) fn apply(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    match self.get(k) {
                        Some(None) => {
                            out.insert(k.clone(), v.clone());
                        }
                        Some(Some(inner)) => {
                            out.insert(k.clone(), inner.apply(v));
                        }
                        None => {}
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.apply(v)).collect()),
            other => other.clone(),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn name(&mut self) -> Result<String, ApiError> {
        self.skip_ws();
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'*') {
            self.i += 1;
        }
        if start == self.i {
            return Err(ApiError::invalid_fields(self.text));
        }
        Ok(self.text[start..self.i].to_string())
    }

    fn list(&mut self, depth: usize) -> Result<Mask, ApiError> {
        if depth > DEPTH_MAX {
            return Err(ApiError::invalid_fields(self.text));
        }
        let mut mask = Mask::default();
        loop {
            let mut path = vec![self.name()?];
            while self.s.get(self.i) == Some(&b'/') {
                self.i += 1;
                path.push(self.name()?);
            }
            self.skip_ws();
            let sub = if self.s.get(self.i) == Some(&b'(') {
                self.i += 1;
                let inner = self.list(depth + 1)?;
                self.skip_ws();
                if self.s.get(self.i) != Some(&b')') {
                    return Err(ApiError::invalid_fields(self.text));
                }
                self.i += 1;
                Some(inner)
            } else {
                None
            };
            mask.insert(&path, sub);
            self.skip_ws();
            if self.s.get(self.i) == Some(&b',') {
                self.i += 1;
                continue;
            }
            return Ok(mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn list_selection() {
        let m = Mask::parse("nextPageToken, files(id,name,shortcutDetails/targetId)").unwrap();
        let v = json!({"kind": "drive#fileList", "nextPageToken": "t", "files": [
            {"id": "1", "name": "a", "size": "3", "shortcutDetails": {"targetId": "9", "targetMimeType": "x"}},
            {"id": "2", "name": "b"}]});
        assert_eq!(
            m.apply(&v),
            json!({"nextPageToken": "t", "files": [
                {"id": "1", "name": "a", "shortcutDetails": {"targetId": "9"}}, {"id": "2", "name": "b"}]})
        );
        assert!(m.check(&["kind", "nextPageToken", "files", "incompleteSearch"]).is_ok());
        assert!(Mask::parse("files(id)").unwrap().get("files").unwrap().unwrap().check(&["id"]).is_ok());
    }

    #[test]
    fn star_slash_and_errors() {
        let v = json!({"user": {"emailAddress": "e", "displayName": "d"}, "kind": "k"});
        assert_eq!(Mask::parse("user/emailAddress").unwrap().apply(&v), json!({"user": {"emailAddress": "e"}}));
        assert_eq!(Mask::parse("*").unwrap().apply(&v), v);
        assert_eq!(Mask::parse("user,user(displayName)").unwrap().apply(&v), json!({"user": v["user"].clone()}));
        for bad in ["", "files(", "files(id", "a,,b", "a)", "fi-les"] {
            assert!(Mask::parse(bad).is_err(), "{bad:?}");
        }
        let e = Mask::parse("id,bogus").unwrap().check(&["id"]).unwrap_err();
        assert_eq!(e.reason, "invalidParameter");
        assert_eq!(e.message, "Invalid field selection bogus");
    }
}
