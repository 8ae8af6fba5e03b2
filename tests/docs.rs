//! The configuration reference documents every key the config file takes, and nothing else:
//! the serde structs of `src/config/file.rs` (each field a key, each struct a table) against
//! the tables under "Configuration reference" in README.md. A key added without its row, or a
//! row left behind by a removed key, fails here.

use std::collections::BTreeSet;

/// Each table's serde struct, and the reference's heading for it.
const TABLES: [(&str, &str); 8] = [
    ("ServerFile", "[server]"),
    ("IssuerFile", "[[issuers]]"),
    ("CacheFile", "[cache]"),
    ("DpopFile", "[dpop]"),
    ("DecisionFile", "[decision]"),
    ("UpstreamFile", "[upstreams.NAME]"),
    ("RouteFile", "[[routes]]"),
    ("ForwardFile", "[forward]"),
];

/// The keys of `struct NAME` in file.rs: its `pub` fields.
fn struct_keys(source: &str, name: &str) -> BTreeSet<String> {
    let start = source
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name} not in src/config/file.rs"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
        .map(|(k, _)| k.trim().to_owned())
        .collect()
}

/// The rows of a reference section: the keys named in each row's first cell, and the row.
fn section_rows(readme: &str, heading: &str) -> Vec<(Vec<String>, String)> {
    let start = readme
        .find(&format!("### `{heading}`"))
        .unwrap_or_else(|| panic!("README has no section ### `{heading}`"));
    let rest = &readme[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let end = rest[..end].find("\n### ").unwrap_or(end);
    rest[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let first = row[1..].split('|').next().unwrap();
            let keys = first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|k| {
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
                .map(str::to_owned)
                .collect();
            (keys, row.to_owned())
        })
        .collect()
}

#[test]
fn the_reference_documents_every_config_key_and_no_other() {
    let source = std::fs::read_to_string("src/config/file.rs").unwrap();
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut problems = Vec::new();
    for (name, heading) in TABLES {
        let keys = struct_keys(&source, name);
        let rows = section_rows(&readme, heading);
        let documented: BTreeSet<String> = rows.iter().flat_map(|(k, _)| k.clone()).collect();
        for k in keys.difference(&documented) {
            problems.push(format!("{heading} {k}: a key with no row in the reference"));
        }
        for k in documented.difference(&keys) {
            problems.push(format!(
                "{heading} {k}: a row for a key the config does not take"
            ));
        }
    }
    // A route's rate_limit is an inline table, documented in the rate_limit row.
    let rate_limit = section_rows(&readme, "[[routes]]")
        .into_iter()
        .find(|(k, _)| k.iter().any(|k| k == "rate_limit"))
        .map(|(_, row)| row)
        .unwrap_or_default();
    for k in struct_keys(&source, "RateLimitFile") {
        if !rate_limit.contains(&format!("{k} = ")) {
            problems.push(format!("routes.rate_limit {k}: not in the rate_limit row"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
