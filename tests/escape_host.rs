//! Escape attempts through what hutch reads from a node (the host side): copies out of a node
//! (links to host paths, a planted link under a second copy, setuid bits, forged agent replies),
//! the console (a flood, terminal escape sequences, on a pipe and in a real terminal under
//! tmux), `--console-log` line ends, and JUnit XML with every byte. Each row runs with hutch
//! started by root and by `nobody` (rootless), and must be refused both ways. The forged-reply
//! row runs driver/tests/copy_out.rs's situation through this file's own stand-in agent
//! (`forged_reply_helper`), re-run as the row's user.

mod common;

#[path = "escape_host/rows.rs"]
mod rows;

#[path = "escape_host/forged.rs"]
mod forged;

#[path = "escape_host/terminal.rs"]
mod terminal;

#[path = "../driver/tests/common/forging.rs"]
mod forging;

use std::path::{Path, PathBuf};

use common::*;

/// `nobody`: has a subordinate id range (CI gives it one).
const NOBODY: u32 = 65534;

/// What a row's run left behind.
pub struct Outcome {
    /// hutch's exit code.
    pub code: i32,
    /// stdout and stderr together.
    pub output: String,
    /// The raw stderr bytes (escape sequences must not be there).
    pub stderr: Vec<u8>,
    /// The run's output directory.
    pub out: PathBuf,
}

/// What the rows of one run (rootful or rootless) share.
pub struct Ctx {
    /// The user hutch runs as (`None`: root).
    pub user: Option<u32>,
    /// A scratch directory for this run.
    pub dir: PathBuf,
    /// A host directory outside every output directory, which no row may change.
    pub hostdir: PathBuf,
    /// The busybox image this user boots.
    pub image: PathBuf,
}

impl Ctx {
    fn new(user: Option<u32>, scratch: &Path) -> Ctx {
        let hostdir = scratch.join("hostdir");
        std::fs::create_dir_all(&hostdir).unwrap();
        std::fs::write(hostdir.join("precious"), "host data\n").unwrap();
        set_mode(&hostdir, 0o755);
        Ctx {
            user,
            dir: scratch.to_path_buf(),
            hostdir,
            image: busybox_image_for(user),
        }
    }

    /// The host directory as it must stay: one file, mode 0755.
    pub fn hostdir_untouched(&self) -> Result<(), String> {
        let names: Vec<String> = std::fs::read_dir(&self.hostdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mode = mode_of(&self.hostdir);
        if names != ["precious"] || mode != 0o755 {
            return Err(format!("the host directory changed: {names:?}, mode {mode:o}"));
        }
        Ok(())
    }

    /// Writes the row's test file (one node, `evil`) and script; runs `hutch test` on it.
    fn run(&self, n: usize, row: &rows::Row) -> Outcome {
        let dir = self.dir.join(format!("row{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o777);
        let out = dir.join("out");
        if let Some(prepare) = row.prepare {
            prepare(self, &out);
        }
        let script = row.script.replace("$HOSTDIR", &self.hostdir.display().to_string());
        std::fs::write(dir.join("test.py"), script).unwrap();
        std::fs::write(
            dir.join("test.toml"),
            format!(
                "[test]\nname = \"escape-host\"\nscript = \"test.py\"\ntimeout = 120\n\n[nodes.evil]\nimage = {:?}\nboot = {}\nenv = {{ HUTCH_STAY_UP = \"1\" }}\n",
                self.image.display().to_string(),
                row.boot
            ),
        )
        .unwrap();
        match row.run {
            rows::How::Test(extra) => {
                let file = dir.join("test.toml").display().to_string();
                let out_s = out.display().to_string();
                let junit = dir.join("junit.xml").display().to_string();
                let mut args = vec!["test", &file, "--output-dir", &out_s, "--junit-xml", &junit];
                args.extend_from_slice(extra);
                let child = hutch_command(self.user, &args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawning hutch");
                let pid = child.id();
                let o = child.wait_with_output().unwrap();
                assert_nothing_left(pid);
                Outcome {
                    code: o.status.code().unwrap_or(-1),
                    output: format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
                    stderr: o.stderr,
                    out,
                }
            }
            rows::How::Custom(f) => f(self, &dir),
        }
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

pub fn mode_of(p: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::mode(&std::fs::symlink_metadata(p).unwrap()) & 0o7777
}

/// Runs every row for one kind of hutch user; prints the table; fails on any surprise.
fn run_table(user: Option<u32>) {
    let mode = if user.is_some() { "rootless" } else { "rootful" };
    let scratch = Scratch::new(&format!("escape-host-{mode}"));
    let ctx = Ctx::new(user, &scratch.0);
    let mut table = String::new();
    let mut failures = Vec::new();
    for (n, row) in rows::all().iter().enumerate() {
        let o = ctx.run(n, row);
        let cell = match (row.judge)(&o, &ctx).and_then(|seen| ctx.hostdir_untouched().map(|()| seen)) {
            Ok(seen) => format!("refused: {seen}"),
            Err(e) => {
                failures.push(format!("{}: NOT refused: {e}\n{}", row.what, o.output));
                format!("**NOT REFUSED**: {e}")
            }
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.what,
            row.how,
            row.refusal,
            cell.replace('|', "\\|")
        ));
    }
    finish_escape_table("escape-host", mode, &table, &failures);
}

#[test]
fn host_side_escapes_are_refused_rootful_and_rootless() {
    if skip_unless_root("escape_host") {
        return;
    }
    run_table(None);
    run_table(Some(NOBODY));
}

/// Not a test of its own: the forged-reply row re-runs this binary as its user to run it
/// (`HUTCH_FORGED_OUT` names the output directory, `HUTCH_FORGED_HOSTDIR` the host directory).
#[test]
#[ignore]
fn forged_reply_helper() {
    let (Some(out), Some(host)) = (std::env::var_os("HUTCH_FORGED_OUT"), std::env::var_os("HUTCH_FORGED_HOSTDIR")) else {
        return;
    };
    forged::run(Path::new(&out), Path::new(&host));
}
