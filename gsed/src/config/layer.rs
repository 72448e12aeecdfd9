//! Reading the fragments of one logical file from every layer and merging them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

use super::{ConfigError, join_key};

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// `system/FOO.conf` and its controller override `controller/cFOO.conf`.
pub struct LogicalFile {
    /// Prefix of its keys in the merged view (`boot`).
    pub key: &'static str,
    pub system: &'static str,
    pub controller: Option<&'static str>,
}

/// A validation finding about a dotted key (relative to the logical file), traced
/// back to the file that set it.
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: String) -> Self {
        Invalid { key: key.into(), message }
    }
}

pub trait Validate {
    fn validate(&self) -> Vec<Invalid>;
}

type Origins = BTreeMap<String, Origin>;

impl LogicalFile {
    pub const fn new(key: &'static str, system: &'static str, controller: Option<&'static str>) -> Self {
        LogicalFile { key, system, controller }
    }

    /// Fragments → merge → validate for this file across `trees`. `None` when any
    /// error was found (the errors are appended).
    pub fn load<T>(
        &self,
        trees: &[PathBuf],
        origins: &mut Origins,
        merged: &mut toml::Table,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T>
    where
        T: DeserializeOwned + Validate + Default,
    {
        let paths: Vec<PathBuf> = trees
            .iter()
            .flat_map(|t| std::iter::once(self.system).chain(self.controller).map(move |rel| t.join(rel)))
            .collect();
        self.load_paths(&paths, origins, merged, errors)
    }

    /// Checks a single file against this schema (used for examples).
    pub fn load_file(
        &self,
        path: &Path,
        origins: &mut Origins,
        merged: &mut toml::Table,
        errors: &mut Vec<ConfigError>,
    ) {
        macro_rules! one {
            ($t:ty) => {{
                let _: Option<$t> = self.load_paths(&[path.to_owned()], origins, merged, errors);
            }};
        }
        use super::*;
        match self.key {
            "boot" => one!(BootConf),
            "etc" => one!(EtcConf),
            "fstab" => one!(FstabConf),
            "network" => one!(NetworkConf),
            "overlays" => one!(OverlaysConf),
            "btrfs" => one!(BtrfsConf),
            "drives" => one!(DrivesConf),
            "servers" => one!(ServerInfoConf),
            "tmpfs" => one!(TmpfsConf),
            "update" => one!(UpdateConf),
            "sources" => one!(SourcesConf),
            other => unreachable!("no schema for {other}"),
        }
    }

    fn load_paths<T>(
        &self,
        paths: &[PathBuf],
        origins: &mut Origins,
        merged_all: &mut toml::Table,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T>
    where
        T: DeserializeOwned + Validate + Default,
    {
        let before = errors.len();
        let mut merged = toml::Table::new();
        let mut parsed = Vec::new();
        for path in paths {
            let Some((text, table)) = read_fragment::<T>(path, &mut parsed, errors) else { continue };
            merge(&mut merged, table, self.key, path, &text, origins);
        }
        if errors.len() > before {
            return None;
        }
        let value: T = match toml::Value::Table(merged.clone()).try_into() {
            Ok(v) => v,
            Err(e) => {
                let file = paths.last().cloned().unwrap_or_else(|| PathBuf::from(self.system));
                errors
                    .push(ConfigError::file(&file, format!("the merged {} is invalid: {}", self.system, e.message())));
                return None;
            }
        };
        for inv in value.validate() {
            let full = format!("{}.{}", self.key, inv.key);
            // The value itself, the first value inside it, or the nearest table above it.
            let inside = format!("{full}.");
            let parts = super::split_key(&full);
            let origin = origins
                .get(&full)
                .or_else(|| {
                    origins.range(inside.clone()..).next().filter(|(k, _)| k.starts_with(&inside)).map(|(_, o)| o)
                })
                .or_else(|| (1..parts.len()).rev().find_map(|n| origins.get(&join_key(&parts[..n]))));
            let file = origin
                .map(|o| o.file.clone())
                .or_else(|| paths.iter().rev().find(|p| p.exists()).cloned())
                .unwrap_or_else(|| PathBuf::from(self.system));
            errors.push(ConfigError {
                file,
                line: origin.and_then(|o| o.line),
                column: None,
                message: format!("{}: {}", inv.key, inv.message),
            });
        }
        if errors.len() > before {
            return None;
        }
        merged_all.insert(self.key.to_owned(), toml::Value::Table(merged));
        Some(value)
    }
}

/// Reads one file, checks it against the schema on its own, returns its raw table.
/// A missing file is simply absent; anything else wrong is an error naming it.
/// `parsed` holds the valid texts already read for this logical file: early
/// boot's three trees usually carry the same file, which is parsed once.
fn read_fragment<T: DeserializeOwned>(
    path: &Path,
    parsed: &mut Vec<(String, toml::Table)>,
    errors: &mut Vec<ConfigError>,
) -> Option<(String, toml::Table)> {
    let text = match super::read_text(path) {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if let Some((_, table)) = parsed.iter().find(|(seen, _)| *seen == text) {
        return Some((text, table.clone()));
    }
    let located = |e: toml::de::Error| {
        let (line, column) = e.span().map(|s| line_col(&text, s.start)).unzip();
        ConfigError { file: path.to_owned(), line, column, message: one_line(e.message()) }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            errors.push(located(e));
            return None;
        }
    };
    // The schema is checked on the parsed table (parsing the text again took
    // as long as the first parse); only a refused file is parsed again, for
    // the line and column of what is wrong.
    if let Err(e) = toml::Value::Table(table.clone()).try_into::<T>() {
        errors.push(match toml::from_str::<T>(&text) {
            Err(e) => located(e),
            Ok(_) => ConfigError::file(path, one_line(e.message())),
        });
        return None;
    }
    parsed.push((text.clone(), table.clone()));
    Some((text, table))
}

/// toml's messages may span lines; an error report keeps one error a line.
fn one_line(msg: &str) -> String {
    let line = msg.trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    // toml says nothing about some bytes (a NUL, say): an error must still say something.
    if line.is_empty() { "not valid TOML here (a control character?)".into() } else { line }
}

/// Merges `src` over `dst` key by key; tables merge, everything else replaces.
fn merge(dst: &mut toml::Table, src: toml::Table, prefix: &str, file: &Path, text: &str, origins: &mut Origins) {
    /// Drops the origins of `key` and everything below it (a range of the map:
    /// children sort between `key.` and `key/`).
    fn forget(origins: &mut Origins, key: &str) {
        origins.remove(key);
        let below: Vec<String> = origins.range(format!("{key}.")..format!("{key}/")).map(|(k, _)| k.clone()).collect();
        for k in below {
            origins.remove(&k);
        }
    }
    fn walk(
        dst: &mut toml::Table,
        src: toml::Table,
        path: &mut Vec<String>,
        file: &Path,
        text: &LineIndex,
        origins: &mut Origins,
    ) {
        for (k, v) in src {
            path.push(k.clone());
            let key = join_key(path);
            match (dst.get_mut(&k), v) {
                (Some(toml::Value::Table(d)), toml::Value::Table(s)) => walk(d, s, path, file, text, origins),
                (_, toml::Value::Table(s)) => {
                    forget(origins, &key);
                    let mut fresh = toml::Table::new();
                    walk(&mut fresh, s, path, file, text, origins);
                    dst.insert(k, toml::Value::Table(fresh));
                }
                (_, v) => {
                    forget(origins, &key);
                    origins.insert(key, Origin { file: file.to_owned(), line: text.locate(&path[1..]) });
                    dst.insert(k, v);
                }
            }
            path.pop();
        }
    }
    let mut path = vec![prefix.to_owned()];
    walk(dst, src, &mut path, file, &LineIndex::new(text), origins);
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, col)
}

/// The line that sets each dotted key of one file, following `[table]` headers,
/// built in one pass so that finding the origin of every value stays linear in
/// the size of the file. Good enough for messages; `None` where the file uses
/// forms it does not follow.
struct LineIndex {
    first: std::collections::HashMap<Vec<String>, usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut first = std::collections::HashMap::new();
        let mut table: Vec<String> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
                table = super::split_key(h.trim());
                first.entry(table.clone()).or_insert(i + 1);
            } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.rsplit_once(']')).map(|(h, _)| h) {
                table = super::split_key(h.trim());
            } else if let Some((k, _)) = line.split_once('=') {
                let mut full = table.clone();
                full.extend(super::split_key(k.trim()));
                first.entry(full).or_insert(i + 1);
            }
        }
        LineIndex { first }
    }

    /// The first line that sets `key` or a key above it (a dotted or inline table).
    fn locate(&self, key: &[String]) -> Option<usize> {
        (1..=key.len()).filter_map(|n| self.first.get(&key[..n]).copied()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based() {
        let t = "a = 1\nbb = x\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 11), (2, 6));
    }

    #[test]
    fn locate_follows_headers() {
        let t = "primary = \"a\"\n\n[health]\n# max_attempts = 9\nmax_attempts = 3\n[slots.b]\ndevice = \"x\"\n[mount.\"/tmp\"]\nsize = \"1G\"\n";
        let k = |s: &str| super::super::split_key(s);
        let index = LineIndex::new(t);
        assert_eq!(index.locate(&k("primary")), Some(1));
        assert_eq!(index.locate(&k("health.max_attempts")), Some(5));
        assert_eq!(index.locate(&k("slots.b.device")), Some(7));
        assert_eq!(index.locate(&k("mount.\"/tmp\".size")), Some(9));
        assert_eq!(index.locate(&k("slots.a.device")), None);
    }
}
