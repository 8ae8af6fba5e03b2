//! The configuration reference documents every key the config file takes, and nothing else:
//! the serde structs of `src/config/file.rs` (each field a key, each struct a table) against
//! the tables of the manual's reference pages (`docs/src/reference/*.md`). A key added without
//! its row, or a row left behind by a removed key, fails here.

use std::collections::BTreeSet;

/// Each table's serde struct, and the reference page for it.
const TABLES: [(&str, &str); 10] = [
    ("ServerFile", "server"),
    ("IssuerFile", "issuers"),
    ("CacheFile", "cache"),
    ("DpopFile", "dpop"),
    ("DecisionFile", "decision"),
    ("TelemetryFile", "telemetry"),
    ("UpstreamFile", "upstreams"),
    ("RouteFile", "routes"),
    ("ForwardFile", "forward"),
    ("AuthzenFile", "authzen"),
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

/// The rows of a reference page's tables: the keys named in each row's first cell, and the row.
fn page_rows(page: &str) -> Vec<(Vec<String>, String)> {
    let file = format!("docs/src/reference/{page}.md");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
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
    let mut problems = Vec::new();
    for (name, page) in TABLES {
        let heading = format!("docs/src/reference/{page}.md");
        let keys = struct_keys(&source, name);
        let rows = page_rows(page);
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
    // Inline tables (a route's rate_limit and mcp, an upstream's identity_assertion and token_exchange), each
    // documented in its own row.
    for (page, key, table) in [
        ("routes", "rate_limit", "RateLimitFile"),
        ("routes", "mcp", "McpFile"),
        ("upstreams", "identity_assertion", "AssertionFile"),
        ("upstreams", "token_exchange", "TokenExchangeFile"),
    ] {
        let row = page_rows(page)
            .into_iter()
            .find(|(k, _)| k.iter().any(|k| k == key))
            .map(|(_, row)| row)
            .unwrap_or_default();
        for k in struct_keys(&source, table) {
            if !row.contains(&format!("{k} = ")) {
                problems.push(format!("{page}.{key} {k}: not in the {key} row"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The reference table of one struct, made from its fields' doc comments: a field documented
/// `Reference: <first cell>`, `Default: <default>`, a blank line and the meaning gives a row; a
/// field "In the reference row of" another gives none (it is named in that row's first cell).
fn generated_table(source: &str, name: &str) -> Vec<String> {
    let start = source.find(&format!("struct {name} {{")).unwrap();
    let body = &source[start..];
    let body = &body[..body.find("\n}").unwrap()];
    let mut rows = vec![
        "| key | default | meaning |".to_owned(),
        "| --- | --- | --- |".to_owned(),
    ];
    let mut doc: Vec<&str> = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.strip_prefix(' ').unwrap_or(d));
            continue;
        }
        if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
            let field = field.0;
            let mut lines = doc.iter();
            match lines.next().copied() {
                Some(first) if first.starts_with("In the reference row of") => {}
                Some(first) if first.starts_with("Reference: ") => {
                    let default = lines.next().and_then(|l| l.strip_prefix("Default: "));
                    let default = default.unwrap_or_else(|| panic!("{name}.{field}: no `Default:` line"));
                    let blank = lines.next();
                    assert_eq!(blank, Some(&""), "{name}.{field}: a blank line after Default");
                    let meaning: Vec<&str> = lines.copied().collect();
                    rows.push(format!(
                        "| {} | {default} | {} |",
                        &first["Reference: ".len()..],
                        meaning.join(" ")
                    ));
                }
                _ => panic!("{name}.{field}: its doc comment is not a reference row (Reference:, Default:, meaning)"),
            }
            doc.clear();
        } else if !line.starts_with("#[") {
            doc.clear();
        }
    }
    rows
}

/// Each field's doc comment in `src/config/file.rs` is the one description of its key: the
/// reference pages' key tables are made from them. `BEARWARD_BLESS=1 cargo test --test docs`
/// rewrites the tables after a doc comment changes; without it, a table that differs fails.
#[test]
fn the_reference_tables_are_made_from_the_field_docs() {
    let source = std::fs::read_to_string("src/config/file.rs").unwrap();
    let mut stale = Vec::new();
    for (name, page) in TABLES {
        let file = format!("docs/src/reference/{page}.md");
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|l| *l == "| key | default | meaning |")
            .unwrap_or_else(|| panic!("{file}: no key table"));
        let end = (start..lines.len())
            .find(|i| !lines[*i].starts_with('|'))
            .unwrap_or(lines.len());
        let made = generated_table(&source, name);
        if lines[start..end] != made.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            if std::env::var_os("BEARWARD_BLESS").is_some() {
                let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
                out.extend(made);
                out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
                std::fs::write(&file, out.join("\n") + "\n").unwrap();
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "made from src/config/file.rs, these differ (BEARWARD_BLESS=1 cargo test --test docs rewrites them): {stale:?}"
    );
}
