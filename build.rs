//! Names the commit bearward is built from (`bearward --version`, `bearward_build_info`):
//! `BEARWARD_COMMIT` from the environment (a container build without `.git` passes it as a
//! build argument), else `git rev-parse`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BEARWARD_COMMIT");
    // A new commit moves the branch's ref (or packed-refs), not HEAD itself.
    for f in [".git/HEAD", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={f}");
    }
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
    }
    let commit = std::env::var("BEARWARD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let c = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !c.is_empty()).then_some(c)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BEARWARD_COMMIT={commit}");
}
