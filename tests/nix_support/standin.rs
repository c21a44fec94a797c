//! The stand-in nixpkgs of the Nix tests: the reference copy `../shared/nixpkgs-ref` (nixpkgs'
//! real lib, test framework, virtualisation modules and test files) with
//! fixtures/nixpkgs-standin laid over its gaps, evaluated with hutch's flake; and what hutch's
//! driver makes of the test files it gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use hutch_driver::plan::{PlanContext, TestPlan};
use serde_json::{json, Value};

use super::{fake_toplevel, nix_instantiate, repo, Scratch};

/// The reference copy, or None (and why) when it is not there.
pub fn reference(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("HUTCH_NIXPKGS_REF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/nixpkgs-ref"));
    if dir.join("lib.tgz").is_file() && dir.join("nixos/lib/testing").is_dir() {
        return Some(dir);
    }
    eprintln!(
        "skipping {test}: no nixpkgs reference copy at {} (lib.tgz and nixos/); it exists on the project's CI machines, or set HUTCH_NIXPKGS_REF",
        dir.display()
    );
    None
}

pub fn copy_tree(from: &Path, to: &Path, overwrite: bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, overwrite);
        } else {
            assert!(
                overwrite || !dst.exists(),
                "the stand-in {} would replace the reference copy's file: a stand-in only fills gaps",
                src.display()
            );
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A stand-in nixpkgs tree: the reference copy's lib and nixos/, plus the fixture's stand-ins.
pub struct Standin {
    dir: Scratch,
}

impl Standin {
    pub fn build(test: &str) -> Option<Standin> {
        let reference = reference(test)?;
        nix_instantiate(test)?;
        let dir = Scratch::new(&format!("standin-{test}"));
        let tar = Command::new("tar")
            .arg("-xzf")
            .arg(reference.join("lib.tgz"))
            .arg("-C")
            .arg(&dir.0)
            .status()
            .unwrap();
        assert!(tar.success(), "unpacking lib.tgz");
        copy_tree(&reference.join("nixos"), &dir.0.join("nixos"), true);
        copy_tree(&repo().join("fixtures/nixpkgs-standin"), &dir.0, false);
        Some(Standin { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// Evaluates `body` with `h` = tests/nix/standin-flake.nix on this tree and `tests` = its
    /// nixos/tests; returns the JSON, or the error text. Warnings go to `warnings`.
    pub fn eval(&self, body: &str) -> (Result<Value, String>, String) {
        let expr = format!(
            r#"{{ standin }}: let
              h = import {repo}/tests/nix/standin-flake.nix {{ inherit standin; repo = {repo}; }};
              inherit (h) lib pkgs;
              tests = standin + "/nixos/tests";
            in {body}"#,
            repo = repo().display()
        );
        let out = nix_instantiate("nixpkgs_ref")
            .unwrap()
            .args([
                "--eval",
                "--strict",
                "--json",
                "--readonly-mode",
                "-E",
                &expr,
                "--argstr",
                "standin",
            ])
            .arg(self.path())
            .output()
            .expect("running nix-instantiate");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return (Err(stderr.clone()), stderr);
        }
        let v = serde_json::from_slice(&out.stdout).map_err(|e| format!("no JSON from nix-instantiate: {e}"));
        (v, stderr)
    }
}

pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

/// Hands a test file evaluated from a test to hutch's driver, with each toplevel (a stand-in:
/// never built) replaced by one that passes hutch's checks; returns the plan.
pub fn plan_of(summary: &Value, dir: &Path, tag: &str) -> TestPlan {
    let top = fake_toplevel(dir);
    let mut file = summary["testFile"].clone();
    for (name, node) in file["nodes"].as_object_mut().unwrap() {
        let toplevel = text(&node["toplevel"]).to_string();
        assert_eq!(
            toplevel,
            text(&summary["machines"][name]["toplevel"]),
            "{tag}: {name}'s test-file toplevel is its system.build.toplevel"
        );
        assert!(
            toplevel.starts_with("/nix/store/") && toplevel.contains("-nixos-system-"),
            "{toplevel}"
        );
        node["toplevel"] = json!(top);
    }
    let path = dir.join(format!("{}.json", tag.replace('/', "-")));
    std::fs::write(&path, file.to_string()).unwrap();
    let ctx = PlanContext {
        cache_dir: dir.join("cache"),
    };
    TestPlan::load_with(&path, &ctx).unwrap_or_else(|e| panic!("hutch refused the test file of {tag}: {e}"))
}

/// Compiles the test script as `hutch test` does before starting anything.
pub fn assert_script_compiles(plan: &TestPlan, tag: &str) {
    let out = Command::new("python3")
        .args(["-c", "import sys; compile(sys.stdin.read(), 'testScript', 'exec')"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), plan.script.source.as_bytes())?;
            c.wait_with_output()
        })
        .expect("running python3");
    assert!(out.status.success(), "{tag}: {}", String::from_utf8_lossy(&out.stderr));
}
