//! rclone's filter language, so that an operator's filter files work unchanged.
//!
//! Rules are globs matched against keys relative to the source path: `*` matches
//! within one path segment, `**` across them, `?` one character but `/`, `[...]` a
//! class, `{a,b}` alternatives, `{{re}}` a regular expression, `\` escapes. A glob
//! starting with `/` is anchored at the root; any other matches a trailing run of
//! whole segments (`*.jpg` matches `a/b/x.jpg`). The first rule that matches decides;
//! a key no rule matches is included. `--include` adds an implicit `- /**` at the end.
//!
//! As in rclone, each rule also yields directory rules, and a key passes only if every
//! directory above it passes them too: a walk of a tree never enters an excluded
//! directory. That matters where file and directory rules disagree (`- dir/` excludes
//! all below `dir`, `+ dir/` alone includes no file).
//!
//! Shaped after rclone's `fs/filter` (glob.go, rules.go, filter.go): the same regular
//! expressions come out of the same globs, so the tests compare against rclone itself.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;

use crate::backend::Entry;
use crate::error::{Error, Result};

/// What an operator asked to filter by, as flags or a job's fields give it: turned
/// into a [`Filter`] by [`FilterSpec::build`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FilterSpec {
    /// Rules `+ GLOB`, `- GLOB` or `!` (clear the rules so far), in order.
    pub filter: Vec<String>,
    /// Files of rules, one a line; `#` and `;` start comments.
    pub filter_from: Vec<PathBuf>,
    /// Globs to include (then everything else is excluded).
    pub include: Vec<String>,
    /// Files of globs to include.
    pub include_from: Vec<PathBuf>,
    /// Globs to exclude.
    pub exclude: Vec<String>,
    /// Files of globs to exclude.
    pub exclude_from: Vec<PathBuf>,
    /// Files naming the keys to copy, one a line (trimmed; `#` and `;` comments).
    pub files_from: Vec<PathBuf>,
    /// Files naming the keys to copy, one a line, taken as they are.
    pub files_from_raw: Vec<PathBuf>,
    /// Only objects at least this large.
    pub min_size_bytes: Option<u64>,
    /// Only objects at most this large.
    pub max_size_bytes: Option<u64>,
    /// Only objects modified at or after this time (`--max-age`), Unix milliseconds.
    pub modified_from_unix_ms: Option<i64>,
    /// Only objects modified at or before this time (`--min-age`), Unix milliseconds.
    pub modified_to_unix_ms: Option<i64>,
    /// Globs match regardless of case.
    pub ignore_case: bool,
}

/// Rules in the order they decide.
#[derive(Debug, Clone, Default)]
struct Rules {
    rules: Vec<(bool, Regex)>,
}

impl Rules {
    /// Adds a rule unless the same one is there already (rclone keeps the first).
    fn add(&mut self, include: bool, re: Regex) {
        if !self.rules.iter().any(|(i, r)| *i == include && r.as_str() == re.as_str()) {
            self.rules.push((include, re));
        }
    }

    fn includes(&self, path: &str) -> bool {
        self.rules.iter().find(|(_, re)| re.is_match(path)).is_none_or(|(include, _)| *include)
    }
}

/// The keys `--files-from` names and the directories above them.
#[derive(Debug, Default)]
struct FilesFrom {
    files: HashSet<String>,
}

/// Which keys a relay, listing or check covers; see the module's docs. The default
/// takes every key.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    file_rules: Rules,
    dir_rules: Rules,
    files: Option<Arc<FilesFrom>>,
    min_size_bytes: Option<u64>,
    max_size_bytes: Option<u64>,
    modified_from_unix_ms: Option<i64>,
    modified_to_unix_ms: Option<i64>,
}

impl FilterSpec {
    /// Only `--include` and `--exclude` globs.
    pub fn globs(include: &[String], exclude: &[String]) -> FilterSpec {
        FilterSpec { include: include.to_vec(), exclude: exclude.to_vec(), ..FilterSpec::default() }
    }

    /// Whether the spec filters nothing.
    pub fn is_empty(&self) -> bool {
        *self == FilterSpec::default()
    }

    /// Builds the filter, reading the files it names; errors name the flag as
    /// `{flag_prefix}include` and so on (`--` for the command line, nothing for a
    /// job's fields) and say how to mend it.
    pub fn build(&self, flag_prefix: &str) -> Result<Filter> {
        let flag = |name: &str| format!("{flag_prefix}{name}");
        let mut b = Builder { f: Filter::default(), ignore_case: self.ignore_case };
        let mut implicit_exclude = false;
        for glob in &self.include {
            b.add(true, glob).map_err(|e| usage(&flag("include"), glob, &e))?;
            implicit_exclude = true;
        }
        for path in &self.include_from {
            for (n, line) in lines(path, false, &flag("include-from"))? {
                b.add(true, &line).map_err(|e| at_line(&flag("include-from"), path, n, &e))?;
            }
            implicit_exclude = true;
        }
        for glob in &self.exclude {
            b.add(false, glob).map_err(|e| usage(&flag("exclude"), glob, &e))?;
        }
        for path in &self.exclude_from {
            for (n, line) in lines(path, false, &flag("exclude-from"))? {
                b.add(false, &line).map_err(|e| at_line(&flag("exclude-from"), path, n, &e))?;
            }
        }
        for rule in &self.filter {
            b.rule(rule).map_err(|e| usage(&flag("filter"), rule, &e))?;
        }
        for path in &self.filter_from {
            for (n, line) in lines(path, false, &flag("filter-from"))? {
                b.rule(&line).map_err(|e| at_line(&flag("filter-from"), path, n, &e))?;
            }
        }
        if implicit_exclude {
            b.add(false, "/**").expect("a valid glob");
        }
        let mut f = b.f;
        f.min_size_bytes = self.min_size_bytes;
        f.max_size_bytes = self.max_size_bytes;
        f.modified_from_unix_ms = self.modified_from_unix_ms;
        f.modified_to_unix_ms = self.modified_to_unix_ms;
        // A bound that leaves nothing between them is a mistake, not an empty run.
        let empty = |lo: &str, hi: &str| {
            let (lo, hi) = (flag(lo), flag(hi));
            Error::Usage(format!(
                "{lo} is larger than {hi}: no object can be both; give a smaller {lo} or a larger {hi}"
            ))
        };
        if f.modified_from_unix_ms.zip(f.modified_to_unix_ms).is_some_and(|(from, to)| to < from) {
            return Err(empty("min-age", "max-age"));
        }
        if f.min_size_bytes.zip(f.max_size_bytes).is_some_and(|(min, max)| max < min) {
            return Err(empty("min-size", "max-size"));
        }
        let lists: Vec<_> = [(&self.files_from, false, "files-from"), (&self.files_from_raw, true, "files-from-raw")]
            .into_iter()
            .filter(|(paths, _, _)| !paths.is_empty())
            .collect();
        if !lists.is_empty() {
            let active = !f.file_rules.rules.is_empty()
                || !f.dir_rules.rules.is_empty()
                || f.min_size_bytes.is_some()
                || f.max_size_bytes.is_some()
                || f.modified_from_unix_ms.is_some()
                || f.modified_to_unix_ms.is_some();
            if active {
                return Err(Error::Usage(format!(
                    "{} names the keys to copy and overrides every other filter: use it alone, or put the \
                     other rules' effect into its list",
                    flag(lists[0].2)
                )));
            }
            let mut files = FilesFrom::default();
            for (paths, raw, name) in lists {
                for path in paths {
                    for (_, line) in lines(path, raw, &flag(name))? {
                        files.files.insert(line.trim_matches('/').to_string());
                    }
                }
            }
            f.files = Some(Arc::new(files));
        }
        Ok(f)
    }
}

fn usage(flag: &str, value: &str, why: &str) -> Error {
    Error::Usage(format!("{flag} {value:?}: {why}"))
}

fn at_line(flag: &str, path: &Path, line: usize, why: &str) -> Error {
    Error::Usage(format!("{flag} {}: line {line}: {why}", path.display()))
}

/// The lines of a rules or names file with their numbers: trimmed, without blank
/// lines and `#` or `;` comments, unless `raw`. `-` reads standard input.
fn lines(path: &Path, raw: bool, flag: &str) -> Result<Vec<(usize, String)>> {
    let text =
        if path == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
            .map_err(|e| Error::Usage(format!("{flag} {}: cannot read it: {e}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let line = if raw { line } else { line.trim() };
            let skip = !raw && (line.is_empty() || line.starts_with('#') || line.starts_with(';'));
            (!skip).then(|| (n + 1, line.to_string()))
        })
        .collect())
}

struct Builder {
    f: Filter,
    ignore_case: bool,
}

impl Builder {
    /// One `+ GLOB`, `- GLOB` or `!` rule.
    fn rule(&mut self, rule: &str) -> std::result::Result<(), String> {
        if rule == "!" {
            self.f.file_rules = Rules::default();
            self.f.dir_rules = Rules::default();
            return Ok(());
        }
        match rule.split_at_checked(2) {
            Some(("+ ", glob)) => self.add(true, glob),
            Some(("- ", glob)) => self.add(false, glob),
            _ => Err("a rule is \"+ GLOB\" (include), \"- GLOB\" (exclude) or \"!\" (clear the rules so far)".into()),
        }
    }

    /// One glob, as rclone adds it: a glob ending in `/` is a directory rule
    /// (excluding `dir/` excludes `dir/**`), one holding `**` is both, any other a
    /// file rule, whose includes also let the walk into the directories it needs.
    fn add(&mut self, include: bool, glob: &str) -> std::result::Result<(), String> {
        if let Some(c) = glob.chars().find(|c| c.is_control()) {
            return Err(format!("holds the control character U+{:04X}: remove it", c as u32));
        }
        let mut glob = glob.to_string();
        let mut dir_rule = glob.ends_with('/');
        let mut file_rule = !dir_rule;
        if dir_rule && !include {
            glob.push_str("**");
        }
        if glob.contains("**") {
            (dir_rule, file_rule) = (true, true);
        }
        let re = path_regex(&glob, self.ignore_case)?;
        if file_rule {
            self.f.file_rules.add(include, re.clone());
            if include || glob == "*" {
                for dir in dir_globs(&glob) {
                    if dir != "/" {
                        self.f.dir_rules.add(include, path_regex(&dir, self.ignore_case)?);
                    }
                }
            }
        }
        if dir_rule {
            self.f.dir_rules.add(include, re);
        }
        Ok(())
    }
}

/// The regular expression of a path glob (rclone's `GlobPathToRegexp`).
fn path_regex(glob: &str, ignore_case: bool) -> std::result::Result<Regex, String> {
    let mut re = String::with_capacity(glob.len() * 2 + 8);
    if ignore_case {
        re.push_str("(?i)");
    }
    let glob = match glob.strip_prefix('/') {
        Some(rest) => {
            re.push('^');
            rest
        }
        None => {
            re.push_str("(^|/)");
            glob
        }
    };
    let mut stars = 0;
    let mut brace_depth = 0usize;
    let mut in_brackets = 0usize;
    let mut escaped = false;
    let mut in_regex = false;
    let mut regex_ending = false;
    let mut last = '\0';
    for c in glob.chars() {
        let prev = std::mem::replace(&mut last, c);
        if escaped {
            re.push(c);
            escaped = false;
            continue;
        }
        if regex_ending {
            if c == '}' {
                // `}}}`: the regular expression ends at the last pair.
                re.pop();
                re.push_str("})");
                continue;
            }
            regex_ending = false;
        }
        if in_regex {
            if c == '}' && prev == '}' {
                in_regex = false;
                regex_ending = true;
                re.pop();
                re.push(')');
            } else {
                re.push(c);
            }
            continue;
        }
        if c != '*' {
            push_stars(&mut re, &mut stars)?;
        }
        if in_brackets > 0 {
            re.push(c);
            match c {
                '[' => in_brackets += 1,
                ']' => in_brackets -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '\\' => {
                re.push(c);
                escaped = true;
            }
            '*' => stars += 1,
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push(c);
                in_brackets += 1;
            }
            ']' => return Err("mismatched ']': escape it as \\]".into()),
            '{' if brace_depth > 0 && prev == '{' => {
                // `{{` opens a regular expression inside the `(` the first `{` wrote.
                in_regex = true;
                brace_depth -= 1;
            }
            '{' => {
                brace_depth += 1;
                re.push('(');
            }
            '}' if brace_depth == 0 => return Err("mismatched '{' and '}': escape a lone brace as \\}".into()),
            '}' => {
                re.push(')');
                brace_depth -= 1;
            }
            ',' if brace_depth > 0 => re.push('|'),
            '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                re.push('\\');
                re.push(c);
            }
            _ => re.push(c),
        }
    }
    push_stars(&mut re, &mut stars)?;
    if in_brackets > 0 {
        return Err("mismatched '[' and ']': close the class or escape it as \\[".into());
    }
    if brace_depth != 0 {
        return Err("mismatched '{' and '}': close the group or escape it as \\{".into());
    }
    if in_regex {
        return Err("mismatched '{{' and '}}': close the regular expression with }}".into());
    }
    re.push('$');
    Regex::new(&re).map_err(|e| format!("not a valid glob (as the regular expression {re:?}: {e})"))
}

fn push_stars(re: &mut String, stars: &mut usize) -> std::result::Result<(), String> {
    match std::mem::take(stars) {
        0 => {}
        1 => re.push_str("[^/]*"),
        2 => re.push_str(".*"),
        _ => return Err("too many stars: * matches within a segment, ** across them".into()),
    }
    Ok(())
}

/// The directory globs a file glob could lie under (rclone's `globToDirGlobs`):
/// matched against a directory with a trailing `/`, they say whether the walk must
/// enter it.
fn dir_globs(glob: &str) -> Vec<String> {
    // Braces holding `/` or `**`, nested braces and regular expressions: any
    // directory might hold a match.
    let too_hard = {
        let mut depth = 0usize;
        let mut hard = glob.contains("{{") || glob.contains("}}");
        let mut group = String::new();
        for c in glob.chars() {
            match c {
                '{' => {
                    hard |= depth > 0;
                    depth += 1;
                    group.clear();
                }
                '}' => {
                    hard |= group.contains('/') || group.contains("**");
                    depth = depth.saturating_sub(1);
                }
                _ if depth > 0 => group.push(c),
                _ => {}
            }
        }
        hard
    };
    if too_hard {
        return vec!["/**".to_string()];
    }
    let mut glob = glob.to_string();
    while glob.contains("//") {
        glob = glob.replace("//", "/");
    }
    let mut out: Vec<String> = Vec::new();
    loop {
        let slash = glob.rfind('/');
        let stars = glob.rfind("**");
        let (at, what) = match (slash, stars) {
            (s, Some(j)) if s.is_none_or(|i| j > i) => (j, "**"),
            (Some(i), _) => (i, ""),
            _ => {
                if out.is_empty() {
                    out.push("/**".to_string());
                }
                return out;
            }
        };
        glob.truncate(at);
        let dir = format!("{glob}{what}/");
        if out.last() != Some(&dir) {
            out.push(dir);
        }
    }
}

impl Filter {
    /// Builds a filter of `--include` and `--exclude` globs alone.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter> {
        FilterSpec::globs(include, exclude).build("--")
    }

    /// Whether a key (relative to the source path) passes the path rules, whatever
    /// its size and age.
    pub fn accepts(&self, rel_key: &str) -> bool {
        if let Some(files) = &self.files {
            return files.files.contains(rel_key);
        }
        if !self.dir_rules.rules.is_empty() {
            // Every directory above the key, outermost first, as a walk enters them.
            let mut dirs = rel_key.match_indices('/').map(|(i, _)| &rel_key[..=i]);
            if !dirs.all(|dir| self.dir_rules.includes(dir)) {
                return false;
            }
        }
        self.file_rules.includes(rel_key)
    }

    /// Whether an object passes: its key (relative to the source path), size and
    /// modification time. An object whose store gives no time fails an age rule.
    pub fn accepts_entry(&self, rel_key: &str, entry: &Entry) -> bool {
        if self.files.is_none() {
            if self.min_size_bytes.is_some_and(|min| entry.size < min)
                || self.max_size_bytes.is_some_and(|max| entry.size > max)
            {
                return false;
            }
            let age_rule = self.modified_from_unix_ms.is_some() || self.modified_to_unix_ms.is_some();
            if age_rule {
                let Some(at) = entry.modified_unix_ms else { return false };
                if self.modified_from_unix_ms.is_some_and(|from| at < from)
                    || self.modified_to_unix_ms.is_some_and(|to| at > to)
                {
                    return false;
                }
            }
        }
        self.accepts(rel_key)
    }

    /// The keys `--files-from` names, if it was given: a relay may look them up
    /// rather than list.
    pub fn named_keys(&self) -> Option<impl Iterator<Item = &str>> {
        self.files.as_ref().map(|f| f.files.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_the_regular_expressions_rclone_makes() {
        for (glob, want) in [
            ("", "(^|/)$"),
            ("potato", "(^|/)potato$"),
            ("potato,sausage", "(^|/)potato,sausage$"),
            ("/potato", "^potato$"),
            ("potato?sausage", "(^|/)potato[^/]sausage$"),
            ("potat[oa]", "(^|/)potat[oa]$"),
            ("potat[[:alpha:]]or", "(^|/)potat[[:alpha:]]or$"),
            ("'.' '+' '(' ')' '|' '^' '$'", r"(^|/)'\.' '\+' '\(' '\)' '\|' '\^' '\$'$"),
            ("*.jpg", r"(^|/)[^/]*\.jpg$"),
            ("a{b,c,d}e", "(^|/)a(b|c|d)e$"),
            ("a{b,{c,d}}e", "(^|/)a(b|(c|d))e$"),
            ("{a,b/{c,d}/**}", "(^|/)(a|b/(c|d)/.*)$"),
            ("potato**", "(^|/)potato.*$"),
            ("*.{jpg,png,gif}", r"(^|/)[^/]*\.(jpg|png|gif)$"),
            (r"a\*b", r"(^|/)a\*b$"),
            ("a{{.*}}b", "(^|/)a(.*)b$"),
            ("/{{regexp}}", "^(regexp)$"),
            (r"/{{\d{8}}}", r"^(\d{8})$"),
            (r"\{{{regexp}}", r"(^|/)\{(regexp)$"),
        ] {
            assert_eq!(path_regex(glob, false).unwrap().as_str(), want, "{glob}");
        }
        for (glob, why) in [
            ("***", "too many stars"),
            ("ab]c", "mismatched ']'"),
            ("ab[c", "mismatched '['"),
            ("ab{x{cd", "mismatched '{'"),
            ("ab}c", "mismatched '{'"),
            ("a{{.*}", "mismatched '{{'"),
        ] {
            let e = path_regex(glob, false).unwrap_err();
            assert!(e.contains(why), "{glob}: {e}");
        }
    }

    #[test]
    fn file_globs_name_the_directories_a_walk_must_enter_as_rclone_does() {
        for (glob, want) in [
            ("*", &["/**"][..]),
            ("/*", &["/"]),
            ("*.jpg", &["/**"]),
            ("//*.jpg", &["/"]),
            ("/a//*.jpg", &["/a/", "/"]),
            ("/a/b/*.jpg", &["/a/b/", "/a/", "/"]),
            ("a/b/*.jpg", &["a/b/", "a/"]),
            ("*/*/*.jpg", &["*/*/", "*/"]),
            ("a/b", &["a/"]),
            ("/a/{jpg,png,gif}/*.{jpg,png,gif}", &["/a/{jpg,png,gif}/", "/a/", "/"]),
            ("a/{b,{c,d}}/*.jpg", &["/**"]),
            ("/a/{a,a*b,a/c,d}/d/", &["/**"]),
            ("/a/{{.*}}/d/", &["/**"]),
            ("**", &["**/"]),
            ("a**b**c**d", &["a**b**c**/", "a**b**/", "a**/"]),
            ("/var/spool/**/ncw", &["/var/spool/**/", "/var/spool/", "/var/", "/"]),
            ("/sausage3**", &["/sausage3**/", "/"]),
        ] {
            assert_eq!(dir_globs(glob), want, "{glob}");
        }
    }

    fn spec(f: impl FnOnce(&mut FilterSpec)) -> Filter {
        let mut s = FilterSpec::default();
        f(&mut s);
        s.build("--").unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides_and_anchors_and_stars_mean_what_rclone_says() {
        let f = spec(|s| s.filter = vec!["- /big/**".into(), "+ *.jpg".into(), "- *".into()]);
        assert!(f.accepts("a.jpg") && f.accepts("x/y/a.jpg"));
        assert!(!f.accepts("big/a.jpg") && !f.accepts("a.png") && !f.accepts("x/a.png"));
        // `/big/**` is anchored: a `big` further down is not it.
        assert!(f.accepts("x/big/a.jpg"));
        // `*` stays within a segment; `--include` adds `- /**`.
        let f = spec(|s| s.include = vec!["/*.txt".into()]);
        assert!(f.accepts("a.txt") && !f.accepts("d/a.txt"));
        let f = spec(|s| s.include = vec!["/d/**".into()]);
        assert!(f.accepts("d/a") && f.accepts("d/e/f") && !f.accepts("e/d/a") && !f.accepts("d"));
        // Excluding a directory excludes all below it; `!` clears what came before.
        let f = spec(|s| s.filter = vec!["- tmp/".into(), "+ **".into()]);
        assert!(!f.accepts("tmp/x") && !f.accepts("a/tmp/x/y") && f.accepts("a/tmpx/y"));
        let f = spec(|s| s.filter = vec!["- *".into(), "!".into(), "+ a".into()]);
        assert!(f.accepts("a") && f.accepts("b"));
        let f = spec(|s| {
            s.filter = vec!["+ *.JPG".into(), "- **".into()];
            s.ignore_case = true;
        });
        assert!(f.accepts("x/a.jpg") && !f.accepts("a.png"));
    }

    #[test]
    fn an_excluded_directory_hides_what_a_later_rule_would_include() {
        // `- /a/*` excludes the directory `a/b/` before `+ /a/b/c` is reached, so a
        // walk never sees `a/b/c`; as a file rule alone it would pass.
        let f = spec(|s| s.filter = vec!["- /a/*".into(), "+ /a/b/c".into(), "- *".into()]);
        assert!(f.file_rules.includes("a/b/c"));
        assert!(f.accepts("a/b/c"), "`- /a/*` is a file rule: directories are not excluded by it");
        let f = spec(|s| s.filter = vec!["- /a/*/".into(), "+ /a/b/c".into()]);
        assert!(!f.accepts("a/b/c") && f.accepts("a/x"));
    }

    fn entry(size: u64, modified: Option<i64>) -> Entry {
        Entry { key: "k".into(), size, modified_unix_ms: modified, ..Entry::default() }
    }

    #[test]
    fn sizes_and_ages_bound_what_passes() {
        let f = spec(|s| {
            s.min_size_bytes = Some(10);
            s.max_size_bytes = Some(20);
            s.modified_from_unix_ms = Some(1_000);
            s.modified_to_unix_ms = Some(2_000);
        });
        assert!(f.accepts_entry("k", &entry(10, Some(1_000))) && f.accepts_entry("k", &entry(20, Some(2_000))));
        assert!(!f.accepts_entry("k", &entry(9, Some(1_500))) && !f.accepts_entry("k", &entry(21, Some(1_500))));
        assert!(!f.accepts_entry("k", &entry(15, Some(999))) && !f.accepts_entry("k", &entry(15, Some(2_001))));
        assert!(!f.accepts_entry("k", &entry(15, None)), "no time: an age rule cannot vouch for it");
        let e = FilterSpec { min_size_bytes: Some(2), max_size_bytes: Some(1), ..FilterSpec::default() };
        let e = e.build("--").unwrap_err().to_string();
        assert!(e.contains("--min-size is larger than --max-size"), "{e}");
    }

    #[test]
    fn files_from_names_the_keys_and_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list");
        std::fs::write(&list, "# the keys\n/a/b.txt\n  c  \n\n; also\nd/e f\n").unwrap();
        let f = spec(|s| s.files_from = vec![list.clone()]);
        assert!(f.accepts("a/b.txt") && f.accepts("c") && f.accepts("d/e f"));
        assert!(!f.accepts("a") && !f.accepts("# the keys") && !f.accepts("x"));
        let raw = spec(|s| s.files_from_raw = vec![list.clone()]);
        assert!(raw.accepts("  c  ") && !raw.accepts("c"));
        let both = FilterSpec { files_from: vec![list], exclude: vec!["x".into()], ..FilterSpec::default() };
        let e = both.build("--").unwrap_err().to_string();
        assert!(e.contains("--files-from names the keys to copy and overrides every other filter"), "{e}");
    }

    #[test]
    fn a_bad_rule_is_named_by_where_it_came_from() {
        let bad = FilterSpec::globs(&["a[".to_string()], &[]);
        let cli = bad.build("--").unwrap_err().to_string();
        assert!(cli.contains("--include \"a[\": mismatched '['"), "{cli}");
        let job = FilterSpec::globs(&[], &["a[".to_string()]).build("").unwrap_err().to_string();
        assert!(job.contains("exclude \"a[\"") && !job.contains("--"), "{job}");
        let rule = FilterSpec { filter: vec!["x".into()], ..FilterSpec::default() };
        let e = rule.build("--").unwrap_err().to_string();
        assert!(e.contains("--filter \"x\": a rule is \"+ GLOB\""), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules");
        std::fs::write(&file, "+ *.jpg\n# ok\n*.png\n").unwrap();
        let from = FilterSpec { filter_from: vec![file], ..FilterSpec::default() };
        let e = from.build("--").unwrap_err().to_string();
        assert!(e.contains("rules: line 3: a rule is"), "{e}");
        let missing = FilterSpec { filter_from: vec!["/nonexistent/rules".into()], ..FilterSpec::default() };
        let e = missing.build("--").unwrap_err().to_string();
        assert!(e.starts_with("--filter-from /nonexistent/rules: cannot read it"), "{e}");
        for e in [cli, job] {
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
}
