//! `bearward demo` from the binary, as a new user runs it: every printed command is followed
//! and answers what the walkthrough says it will.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Step {
    expect: u16,
    auth: Option<String>,
    url: String,
}

/// `curl -i [-H 'Authorization: Bearer T'] URL`
fn parse_curl(line: &str) -> (Option<String>, String) {
    let line = line
        .trim()
        .strip_prefix("curl -i ")
        .expect("a curl command");
    match line.strip_prefix("-H '") {
        Some(rest) => {
            let (header, url) = rest.split_once("' ").unwrap();
            let value = header.strip_prefix("Authorization: ").unwrap();
            (Some(value.to_owned()), url.trim().to_owned())
        }
        None => (None, line.trim().to_owned()),
    }
}

#[tokio::test]
async fn demo_prints_commands_that_do_what_it_says() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.starts_with("Press Ctrl-C");
            let _ = tx.send(line);
            if done {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                let done = l.starts_with("Press Ctrl-C");
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with("Press Ctrl-C")),
        "the demo did not finish starting:\n{}",
        lines.join("\n")
    );

    let mut steps = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix('[') {
            let expect: u16 = rest.split("expect ").nth(1).unwrap()[..3].parse().unwrap();
            let (auth, url) = parse_curl(&lines[i + 1]);
            steps.push(Step { expect, auth, url });
        }
    }
    assert_eq!(steps.len(), 6, "six commands printed");
    assert_eq!(
        steps.iter().map(|s| s.expect).collect::<Vec<_>>(),
        [200, 401, 403, 401, 200, 200]
    );

    let c = common::client();
    for s in &steps {
        let headers: Vec<(&str, &str)> = s
            .auth
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let a = common::get(&c, &s.url, &headers).await;
        assert_eq!(a.status.as_u16(), s.expect, "{}: {}", s.url, a.body);
        match s.expect {
            200 if s.url.contains("/api/") => {
                assert!(
                    a.body.contains("\"x-auth-subject\":\"demo-user\""),
                    "{}",
                    a.body
                );
                assert!(
                    a.body.contains("\"x-auth-scopes\":\"orders:read\""),
                    "{}",
                    a.body
                );
            }
            200 if s.url.contains("/.well-known/") => {
                let doc: serde_json::Value = serde_json::from_str(&a.body).unwrap();
                assert_eq!(doc["resource"], "https://demo.bearward.local/api");
                assert_eq!(
                    doc["scopes_supported"],
                    serde_json::json!(["admin", "orders:read"])
                );
                assert!(doc["authorization_servers"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("http://127.0.0.1:"));
            }
            401 if s.auth.is_none() => {
                assert_eq!(
                    a.headers["www-authenticate"],
                    "Bearer realm=\"bearward\", resource_metadata=\"https://demo.bearward.local/.well-known/oauth-protected-resource/api\", scope=\"orders:read\""
                );
            }
            401 => assert!(a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error_description=\"token expired\"")),
            403 => assert!(a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("scope=\"admin\"")),
            _ => {}
        }
    }
    // The printed policy passes `bearward check` as the walkthrough suggests.
    let policy: String = lines
        .iter()
        .skip_while(|l| !l.starts_with("The policy"))
        .skip(2)
        .take_while(|l| !l.starts_with("Try these"))
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned() + "\n")
        .collect();
    let file =
        std::env::temp_dir().join(format!("bearward-demo-policy-{}.toml", std::process::id()));
    std::fs::write(&file, policy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_file(&file);

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status:?}");
}

/// `bearward demo --train`, the profile-guided build's training run (deploy/pgo.sh): it loads
/// the demo from the same process, checks every answer and exits 0 with the count.
#[test]
fn demo_train_sends_the_mix_and_checks_every_answer() {
    let out = Command::new(env!("CARGO_BIN_EXE_bearward"))
        .args(["demo", "--train", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: u64 = text
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(n > 100, "{text}");
    assert!(text.contains("every answer as expected"), "{text}");
}
