//! Reading the fragments of one logical file from every layer and merging them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

use super::{ConfigError, Loaded};

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
}

/// `system/FOO.conf` and its controller override `controller/cFOO.conf`.
pub struct LogicalFile {
    /// Prefix of its keys in the merged view (`boot`).
    pub key: &'static str,
    pub system: &'static str,
    pub controller: Option<&'static str>,
}

/// What a validation step may report: a message about a dotted key (relative to the
/// logical file), which is traced back to the file that set it.
pub struct Invalid {
    pub key: String,
    pub message: String,
}

pub trait Validate {
    fn validate(&self) -> Vec<Invalid>;
}

impl LogicalFile {
    pub const fn new(
        key: &'static str,
        system: &'static str,
        controller: Option<&'static str>,
    ) -> Self {
        LogicalFile {
            key,
            system,
            controller,
        }
    }

    /// Fragments → merge → validate for this file. `None` when any error was found.
    pub fn load<T>(
        &self,
        trees: &[PathBuf],
        out: &mut Loaded,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T>
    where
        T: DeserializeOwned + Validate + Default,
    {
        let before = errors.len();
        let mut merged = toml::Table::new();
        for tree in trees {
            for rel in std::iter::once(self.system).chain(self.controller) {
                let path = tree.join(rel);
                let Some((text, table)) = read_fragment::<T>(&path, errors) else {
                    continue;
                };
                merge(&mut merged, table, self.key, &path, &text, &mut out.origins);
            }
        }
        if errors.len() > before {
            return None;
        }
        let value: T = match toml::Value::Table(merged.clone()).try_into() {
            Ok(v) => v,
            Err(e) => {
                errors.push(ConfigError {
                    file: PathBuf::from(self.system),
                    line: None,
                    column: None,
                    message: format!("merged result is invalid: {}", e.message()),
                });
                return None;
            }
        };
        for inv in value.validate() {
            let full = format!("{}.{}", self.key, inv.key);
            let origin = out
                .origins
                .iter()
                .find(|(k, _)| **k == full || k.starts_with(&format!("{full}.")))
                .map(|(_, o)| o.clone());
            errors.push(ConfigError {
                file: origin
                    .as_ref()
                    .map(|o| o.file.clone())
                    .unwrap_or_else(|| PathBuf::from(self.system)),
                line: origin.and_then(|o| o.line),
                column: None,
                message: format!("{}: {}", inv.key, inv.message),
            });
        }
        if errors.len() > before {
            return None;
        }
        out.merged
            .insert(self.key.to_owned(), toml::Value::Table(merged));
        Some(value)
    }
}

/// Reads one file, checks it against the schema on its own, returns its raw table.
/// A missing file is simply absent; anything else wrong is an error naming it.
fn read_fragment<T: DeserializeOwned>(
    path: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<(String, toml::Table)> {
    let err = |line, column, message: String| ConfigError {
        file: path.to_owned(),
        line,
        column,
        message,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            errors.push(err(None, None, format!("cannot read: {e}")));
            return None;
        }
    };
    if meta.is_dir() {
        errors.push(err(
            None,
            None,
            "is a directory, expected a TOML file".into(),
        ));
        return None;
    }
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(err(None, None, format!("cannot read: {e}")));
            return None;
        }
    };
    let located = |e: toml::de::Error| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unzip();
        err(line, col, e.message().trim().to_owned())
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            errors.push(located(e));
            return None;
        }
    };
    if let Err(e) = toml::from_str::<T>(&text) {
        errors.push(located(e));
        return None;
    }
    Some((text, table))
}

/// Merges `src` over `dst` key by key; tables merge, everything else replaces.
fn merge(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    file: &Path,
    text: &str,
    origins: &mut std::collections::BTreeMap<String, Origin>,
) {
    fn walk(
        dst: &mut toml::Table,
        src: toml::Table,
        path: &mut Vec<String>,
        file: &Path,
        text: &str,
        origins: &mut std::collections::BTreeMap<String, Origin>,
    ) {
        for (k, v) in src {
            path.push(k.clone());
            match (dst.get_mut(&k), v) {
                (Some(toml::Value::Table(d)), toml::Value::Table(s)) => {
                    walk(d, s, path, file, text, origins)
                }
                (_, toml::Value::Table(s)) => {
                    let mut fresh = toml::Table::new();
                    // A replaced table loses the origins of its old leaves.
                    let key = path.join(".");
                    origins.retain(|o, _| !o.starts_with(&format!("{key}.")) && *o != key);
                    walk(&mut fresh, s, path, file, text, origins);
                    dst.insert(k, toml::Value::Table(fresh));
                }
                (_, v) => {
                    let key = path.join(".");
                    origins.retain(|o, _| !o.starts_with(&format!("{key}.")));
                    let line = locate(text, &path[1..]);
                    origins.insert(
                        key,
                        Origin {
                            file: file.to_owned(),
                            line,
                        },
                    );
                    dst.insert(k, v);
                }
            }
            path.pop();
        }
    }
    let mut path = vec![prefix.to_owned()];
    walk(dst, src, &mut path, file, text, origins);
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// Finds the line that sets a dotted key, following `[table]` headers. Good enough
/// for messages; `None` where the file uses forms it does not follow.
fn locate(text: &str, key: &[String]) -> Option<usize> {
    let mut table: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            table = split_key(h);
        } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = split_key(h);
        } else if let Some((k, _)) = line.split_once('=') {
            if line.starts_with('#') {
                continue;
            }
            let mut full = table.clone();
            full.extend(split_key(k));
            if full.len() <= key.len() && full[..] == key[..full.len()] {
                return Some(i + 1);
            }
        }
    }
    None
}

fn split_key(k: &str) -> Vec<String> {
    k.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_owned())
        .collect()
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
        let t = "primary = \"a\"\n\n[health]\n# max_attempts = 9\nmax_attempts = 3\n[slots.b]\ndevice = \"x\"\n";
        let k = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(locate(t, &k("primary")), Some(1));
        assert_eq!(locate(t, &k("health.max_attempts")), Some(5));
        assert_eq!(locate(t, &k("slots.b.device")), Some(7));
        assert_eq!(locate(t, &k("slots.a.device")), None);
    }
}
