//! Dotted keys naming a value in the merged view: `boot.health.max_attempts`,
//! with quotes around parts that are not bare words: `tmpfs.mount."/tmp".size`.

fn bare(part: &str) -> bool {
    !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub fn join_key<S: AsRef<str>>(parts: &[S]) -> String {
    parts
        .iter()
        .map(|p| {
            let p = p.as_ref();
            if bare(p) { p.to_owned() } else { format!("\"{}\"", p.replace('"', "\\\"")) }
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub fn split_key(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => cur.extend(chars.next()),
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let parts = ["tmpfs", "mount", "/var/tmp", "size"];
        let k = join_key(&parts);
        assert_eq!(k, "tmpfs.mount.\"/var/tmp\".size");
        assert_eq!(split_key(&k), parts);
        assert_eq!(split_key("boot.health"), ["boot", "health"]);
    }
}
