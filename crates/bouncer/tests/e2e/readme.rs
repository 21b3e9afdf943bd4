//! README.md, executed: a fresh `git clone`, the README's run command (on
//! free ports), then the walk-through block exactly as written, checking
//! every documented status. If the README and the product drift apart, this
//! fails.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tokio::process::Command;

use crate::harness::{BIN, free_port};

/// The first ```sh block after `heading`.
fn sh_block(readme: &str, heading: &str) -> String {
    let section = &readme[readme.find(heading).unwrap_or_else(|| panic!("README lacks {heading:?}"))..];
    let start = section.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = section[start..].find("```").expect("a closed block");
    section[start..start + end].to_owned()
}

/// The statuses the walk-through documents, in order (`# → 200 429`).
fn documented_statuses(block: &str) -> Vec<String> {
    block
        .lines()
        .filter_map(|l| l.split_once("# → ").map(|(_, codes)| codes))
        .flat_map(|codes| codes.split_whitespace().map(str::to_owned))
        .collect()
}

fn git(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("git").args(args).current_dir(dir).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_works_on_a_fresh_clone() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    git(&["clone", "--quiet", repo.to_str().unwrap(), "bouncer"], dir.path());
    let clone = dir.path().join("bouncer");

    // The free-port override: the shipped files, with other ports.
    let ports: Vec<(u16, u16)> = [8080, 8081, 9000, 9091].into_iter().map(|p| (p, free_port())).collect();
    for file in ["config/bouncer.yaml", "config/routes.yaml"] {
        let path = clone.join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (old, new) in &ports {
            text = text.replace(&format!("127.0.0.1:{old}"), &format!("127.0.0.1:{new}"));
        }
        std::fs::write(path, text).unwrap();
    }
    let readme = std::fs::read_to_string(clone.join("README.md")).unwrap();
    let run = sh_block(&readme, "## The two commands");
    assert_eq!(run.trim(), "scripts/run.sh", "the run command the README gives");
    // BOUNCER_BIN: scripts/run.sh runs this test's binary instead of building the clone again.
    let mut bouncer = Command::new("bash")
        .args(["-c", run.trim()])
        .current_dir(&clone)
        .env("BOUNCER_BIN", BIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = ports[0].1;
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        let r = http.get(format!("http://127.0.0.1:{gateway}/api/orders/1")).bearer_auth("x").send().await;
        if r.is_ok_and(|r| r.status() == 401) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "`{}` did not bring the gateway up", run.trim());

    let mut walk = sh_block(&readme, "## Walk-through");
    for (old, new) in &ports {
        walk = walk.replace(&format!("localhost:{old}"), &format!("localhost:{new}"));
    }
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walk])
        .current_dir(&clone)
        .env("BOUNCER_BIN", BIN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walk-through failed:\n{stdout}\n{stderr}");

    let printed: Vec<String> = stdout
        .lines()
        .filter(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    assert_eq!(printed, documented_statuses(&walk), "statuses printed vs documented; output:\n{stdout}");

    // What the upstream saw: the normalized path and the gateway's identity headers.
    let echoed: Value = stdout
        .lines()
        .find(|l| l.starts_with("{\"headers\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no echo output in:\n{stdout}"));
    assert_eq!(echoed["path"], "/api/orders/17");
    assert_eq!(echoed["query"], "page=1");
    assert_eq!(echoed["headers"]["x-user-email"], "alice@example.com");
    assert_eq!(echoed["headers"]["x-user-roles"], "user", "the spoofed role never reaches the upstream");
    assert!(stdout.contains("\"action\":\"gateway.denied\""), "denials in the audit log:\n{stdout}");
    assert!(stdout.contains("audit chain intact"), "{stdout}");

    bouncer.kill().await.unwrap();
}
