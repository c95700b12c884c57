//! File properties: the user's property templates (`file_properties/templates/*_for_user`)
//! and the property groups files carry (`CommitInfo.property_groups`, and
//! `include_property_groups` on listings and metadata).
//!
//! A template is a named list of string fields; a group is a file's values for the
//! fields of one template. The limits are the documented ones (template names and
//! field names 256 bytes, descriptions and values 1,024 bytes, 32 fields a template),
//! checked as Dropbox's own error unions say: `ModifyTemplateError` when a template is
//! made, `InvalidPropertyGroupError` when a commit carries groups, `TemplateError` for
//! an id no template has. Template ids are `ptid:` and 22 characters, as Dropbox's look.
//!
//! Groups live on the file: a new revision keeps the groups of templates its commit
//! does not name, and a commit that changes no bytes still sets the groups it names
//! **(emulator's choice; the documentation says only "custom properties to add to
//! file")**. A removed template takes its groups with it.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::wire::{ApiError, Args};

/// Template names and field names, in bytes.
pub(crate) const NAME_BYTES_MAX: usize = 256;
/// Template and field descriptions, and field values, in bytes.
pub(crate) const TEXT_BYTES_MAX: usize = 1024;
/// Fields in one template.
pub(crate) const TEMPLATE_FIELDS_MAX: usize = 32;
/// Templates one user may have **(emulator's choice: Dropbox gives no number)**.
pub(crate) const TEMPLATES_MAX: usize = 64;
/// The pattern `TemplateId` arguments must match.
const TEMPLATE_ID_PATTERN: &str = "(/|ptid:).*";

/// One file's values for the fields of one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PropertyGroup {
    pub template_id: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct FieldTemplate {
    name: String,
    description: String,
}

#[derive(Debug, Clone)]
struct Template {
    name: String,
    description: String,
    fields: Vec<FieldTemplate>,
}

/// The user's templates.
pub(crate) struct Templates {
    map: BTreeMap<String, Template>,
    seed: u64,
    serial: u64,
}

/// `TemplateError.template_not_found`, whose value is the id.
pub(crate) fn template_not_found(id: &str) -> Value {
    json!({ ".tag": "template_not_found", "template_not_found": id })
}

fn modify_error(tag: &str) -> ApiError {
    ApiError::tag(tag)
}

impl Templates {
    pub(crate) fn new(seed: u64) -> Templates {
        Templates { map: BTreeMap::new(), seed, serial: 0 }
    }

    fn new_id(&mut self) -> String {
        self.serial += 1;
        let d = Sha256::new()
            .chain_update(self.seed.to_le_bytes())
            .chain_update(b"ptid")
            .chain_update(self.serial.to_le_bytes());
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.finalize()[..16]);
        format!("ptid:{}", text.replace(['-', '_'], "A"))
    }

    /// Whether a template has this id.
    pub(crate) fn exists(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    /// Every template id.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Checks that every id in a filter names a template (a `TemplateError` otherwise).
    pub(crate) fn check_filter(&self, ids: &[String]) -> Result<(), Value> {
        match ids.iter().find(|id| !self.exists(id)) {
            Some(id) => Err(template_not_found(id)),
            None => Ok(()),
        }
    }

    /// Checks the groups a commit carries against the templates: an
    /// `InvalidPropertyGroupError` value for the first that does not fit.
    pub(crate) fn check_groups(&self, groups: &[PropertyGroup]) -> Result<(), Value> {
        for (i, g) in groups.iter().enumerate() {
            let Some(t) = self.map.get(&g.template_id) else { return Err(template_not_found(&g.template_id)) };
            if groups[..i].iter().any(|o| o.template_id == g.template_id) {
                return Err(json!({ ".tag": "duplicate_property_groups" }));
            }
            for (j, (name, value)) in g.fields.iter().enumerate() {
                if name.len() > NAME_BYTES_MAX || value.len() > TEXT_BYTES_MAX {
                    return Err(json!({ ".tag": "property_field_too_large" }));
                }
                let known = t.fields.iter().any(|f| f.name == *name);
                let repeated = g.fields[..j].iter().any(|(n, _)| n == name);
                if !known || repeated {
                    return Err(json!({ ".tag": "does_not_fit_template" }));
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, t: Template) -> Result<String, ApiError> {
        if t.fields.len() > TEMPLATE_FIELDS_MAX {
            return Err(modify_error("too_many_properties"));
        }
        let too_large = t.name.len() > NAME_BYTES_MAX
            || t.description.len() > TEXT_BYTES_MAX
            || t.fields.iter().any(|f| f.name.len() > NAME_BYTES_MAX || f.description.len() > TEXT_BYTES_MAX);
        if too_large {
            return Err(modify_error("template_attribute_too_large"));
        }
        for (i, f) in t.fields.iter().enumerate() {
            if t.fields[..i].iter().any(|o| o.name == f.name) {
                return Err(modify_error("conflicting_property_names"));
            }
        }
        if self.map.len() >= TEMPLATES_MAX {
            return Err(modify_error("too_many_templates"));
        }
        let id = self.new_id();
        self.map.insert(id.clone(), t);
        Ok(id)
    }

    fn get_json(&self, id: &str) -> Result<Value, ApiError> {
        let t = self.map.get(id).ok_or_else(|| ApiError::Route(template_not_found(id)))?;
        let fields: Vec<Value> = t
            .fields
            .iter()
            .map(|f| json!({ "name": f.name, "description": f.description, "type": { ".tag": "string" } }))
            .collect();
        Ok(json!({ "name": t.name, "description": t.description, "fields": fields }))
    }
}

/// A `TemplateId` argument: at least one character, matching its pattern (a 400 otherwise).
fn template_id<'a>(a: &Args<'a>, field: &str, value: &'a Value) -> Result<&'a str, ApiError> {
    let Value::String(id) = value else { return Err(a.err(field, "expected string")) };
    if id.is_empty() {
        return Err(a.err(field, "string is shorter than 1 character"));
    }
    if !(id.starts_with('/') || id.starts_with("ptid:")) {
        return Err(a.err(field, format!("'{id}' did not match pattern '{TEMPLATE_ID_PATTERN}'")));
    }
    Ok(id)
}

/// `CommitInfo.property_groups`: a list of `PropertyGroup`, empty when absent.
pub(crate) fn parse_groups(a: &Args) -> Result<Vec<PropertyGroup>, ApiError> {
    if a.opt_list("property_groups")?.is_none() {
        return Ok(Vec::new());
    }
    let list = a.list("property_groups")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let g = a.element("property_groups", i, v)?;
        let id = g.str("template_id")?;
        template_id(&g, "template_id", &Value::String(id.to_string()))?;
        let fields = g.list("fields")?;
        let mut pairs = Vec::with_capacity(fields.len());
        for (j, f) in fields.iter().enumerate() {
            let f = g.element("fields", j, f)?;
            pairs.push((f.str("name")?.to_string(), f.str("value")?.to_string()));
        }
        out.push(PropertyGroup { template_id: id.to_string(), fields: pairs });
    }
    Ok(out)
}

/// `include_property_groups` (`TemplateFilterBase`): the template ids of
/// `filter_some` (at least one), or None when absent.
pub(crate) fn parse_filter(a: &Args) -> Result<Option<Vec<String>>, ApiError> {
    const FIELD: &str = "include_property_groups";
    match a.union(FIELD)? {
        None => Ok(None),
        Some(("filter_some", Some(u))) => {
            let list = u.list("filter_some")?;
            if list.is_empty() {
                return Err(u.err("filter_some", "list has 0 items, fewer than the minimum of 1"));
            }
            list.iter()
                .map(|v| template_id(&u, "filter_some", v).map(str::to_string))
                .collect::<Result<_, _>>()
                .map(Some)
        }
        Some(("filter_some", None)) => Err(a.err(FIELD, "'filter_some' needs a list of template ids")),
        Some((other, _)) => Err(a.err(FIELD, format!("unknown tag '{other}'"))),
    }
}

/// The `property_groups` of a file's metadata: its groups for the templates in
/// `filter` that still exist; None when there are none.
pub(crate) fn groups_json(groups: &[PropertyGroup], filter: &[String], templates: &Templates) -> Option<Value> {
    let shown: Vec<Value> = groups
        .iter()
        .filter(|g| filter.contains(&g.template_id) && templates.exists(&g.template_id))
        .map(|g| {
            let fields: Vec<Value> = g.fields.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect();
            json!({ "template_id": g.template_id, "fields": fields })
        })
        .collect();
    (!shown.is_empty()).then_some(Value::Array(shown))
}

/// The groups a file holds after a commit that names `given`: those of the templates
/// the commit names are replaced, the others kept.
pub(crate) fn merged(old: &[PropertyGroup], given: &[PropertyGroup]) -> Vec<PropertyGroup> {
    let mut out: Vec<PropertyGroup> =
        old.iter().filter(|g| !given.iter().any(|n| n.template_id == g.template_id)).cloned().collect();
    out.extend(given.iter().cloned());
    out
}

/// The `file_properties/templates/*_for_user` routes.
pub(crate) fn template_route(templates: &mut Templates, route: &str, a: &Args) -> Result<Value, ApiError> {
    match route {
        "file_properties/templates/add_for_user" => {
            let name = a.str("name")?.to_string();
            let description = a.str("description")?.to_string();
            let list = a.list("fields")?;
            let mut fields = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                let f = a.element("fields", i, v)?;
                match f.union("type")? {
                    Some(("string", _)) => {}
                    Some((other, _)) => return Err(f.err("type", format!("unknown tag '{other}'"))),
                    None => return Err(f.err("type", "missing required field")),
                }
                fields.push(FieldTemplate {
                    name: f.str("name")?.to_string(),
                    description: f.str("description")?.to_string(),
                });
            }
            let id = templates.add(Template { name, description, fields })?;
            Ok(json!({ "template_id": id }))
        }
        "file_properties/templates/list_for_user" => Ok(json!({ "template_ids": templates.ids() })),
        "file_properties/templates/get_for_user" => {
            let id = template_id(a, "template_id", &Value::String(a.str("template_id")?.to_string()))?.to_string();
            templates.get_json(&id)
        }
        "file_properties/templates/remove_for_user" => {
            let id = template_id(a, "template_id", &Value::String(a.str("template_id")?.to_string()))?.to_string();
            if templates.map.remove(&id).is_none() {
                return Err(ApiError::Route(template_not_found(&id)));
            }
            Ok(Value::Null)
        }
        other => unreachable!("{other} is not a template route"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(fields: &[&str]) -> Template {
        Template {
            name: "t".into(),
            description: "d".into(),
            fields: fields.iter().map(|f| FieldTemplate { name: f.to_string(), description: String::new() }).collect(),
        }
    }

    fn group(id: &str, fields: &[(&str, &str)]) -> PropertyGroup {
        PropertyGroup {
            template_id: id.into(),
            fields: fields.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn templates_are_checked_as_made() {
        let mut t = Templates::new(1);
        let id = t.add(template(&["a", "b"])).unwrap();
        assert!(id.starts_with("ptid:") && id.len() == 5 + 22, "{id}");
        assert_ne!(t.add(template(&["a"])).unwrap(), id);
        let tag = |e: ApiError| match e {
            ApiError::Route(v) => v[".tag"].as_str().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(tag(t.add(template(&["a", "a"])).unwrap_err()), "conflicting_property_names");
        let many: Vec<String> = (0..33).map(|i| format!("f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(tag(t.add(template(&many)).unwrap_err()), "too_many_properties");
        let mut long = template(&["a"]);
        long.name = "n".repeat(257);
        assert_eq!(tag(t.add(long).unwrap_err()), "template_attribute_too_large");
        assert_eq!(tag(t.get_json("ptid:nope").unwrap_err()), "template_not_found");
    }

    #[test]
    fn groups_must_fit_their_templates() {
        let mut t = Templates::new(1);
        let id = t.add(template(&["a"])).unwrap();
        assert_eq!(t.check_groups(&[group(&id, &[("a", "x")])]), Ok(()));
        let tag = |r: Result<(), Value>| r.unwrap_err()[".tag"].as_str().unwrap().to_string();
        assert_eq!(tag(t.check_groups(&[group("ptid:nope", &[])])), "template_not_found");
        assert_eq!(tag(t.check_groups(&[group(&id, &[("b", "x")])])), "does_not_fit_template");
        assert_eq!(tag(t.check_groups(&[group(&id, &[("a", "x"), ("a", "y")])])), "does_not_fit_template");
        assert_eq!(tag(t.check_groups(&[group(&id, &[("a", &"v".repeat(1025))])])), "property_field_too_large");
        assert_eq!(tag(t.check_groups(&[group(&id, &[]), group(&id, &[])])), "duplicate_property_groups");
        let old = vec![group(&id, &[("a", "old")]), group("ptid:other", &[])];
        let new = merged(&old, &[group(&id, &[("a", "new")])]);
        assert_eq!(new, vec![group("ptid:other", &[]), group(&id, &[("a", "new")])]);
        let shown = groups_json(&new, std::slice::from_ref(&id), &t).unwrap();
        assert_eq!(shown, json!([{ "template_id": id, "fields": [{ "name": "a", "value": "new" }] }]));
        assert_eq!(groups_json(&new, &["ptid:other".to_string()], &t), None, "an unknown template shows nothing");
    }
}
