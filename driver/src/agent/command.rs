//! How a request becomes a process: the program (direct, or bash with `set -euo pipefail`),
//! the login environment, the working directory and a process group of its own. Command lines
//! that are only words skip the shell: same result, one exec instead of two.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use super::{login, Command, RunRequest};

/// PATH for commands: NixOS's system profile and wrappers first, then the usual FHS places.
pub const DEFAULT_PATH: &str = "/run/wrappers/bin:/root/.nix-profile/bin:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where bash may be: NixOS's system profile, then FHS systems.
const BASH: &[&str] = &["/run/current-system/sw/bin/bash", "/bin/bash", "/usr/bin/bash"];

/// Bash builtins and keywords: a command starting with one of these always goes to the shell
/// (only `true`, `false`, `echo`, `test` and `pwd` behave the same as their programs).
const SHELL_WORDS: &[&str] = &[
    "cd",
    "exit",
    "export",
    "set",
    "unset",
    "source",
    "eval",
    "exec",
    "shift",
    "return",
    "break",
    "continue",
    "alias",
    "unalias",
    "read",
    "wait",
    "trap",
    "ulimit",
    "umask",
    "readonly",
    "declare",
    "typeset",
    "local",
    "let",
    "shopt",
    "hash",
    "type",
    "command",
    "builtin",
    "enable",
    "jobs",
    "fg",
    "bg",
    "kill",
    "times",
    "caller",
    "history",
    "fc",
    "getopts",
    "printf",
    "coproc",
    "select",
    "function",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "while",
    "until",
    "do",
    "done",
    "case",
    "esac",
    "time",
    "in",
    "logout",
    "dirs",
    "pushd",
    "popd",
    "disown",
    "suspend",
    "compgen",
    "complete",
    "compopt",
    "mapfile",
    "readarray",
    "bind",
    "help",
];

/// A command line that is just words (no quoting, expansion, redirection, operators or
/// assignments) runs the same without a shell; returns its words.
fn simple_words(line: &str) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:,+@%=-".contains(c);
    if !line.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let first = words.first()?;
    if first.contains('=') || SHELL_WORDS.contains(&first.as_str()) {
        return None;
    }
    Some(words)
}

/// The shell for command lines: bash where it exists, else sh.
fn shell() -> (&'static str, bool) {
    match BASH.iter().find(|p| Path::new(p).exists()) {
        Some(b) => (b, true),
        None => ("/bin/sh", false),
    }
}

/// How a request becomes a process.
enum Launch {
    /// Exec the words directly.
    Direct(Vec<String>),
    /// Run a script with the shell.
    Script(String),
}

/// Decide how to run the request, and with which environment.
fn launch(req: &RunRequest, fast: bool) -> (Launch, &'static str, bool, Option<login::Env>) {
    let (sh, is_bash) = shell();
    let env = login::environment(sh, is_bash);
    let prelude = if is_bash { "set -euo pipefail" } else { "set -eu" };
    let how = match &req.command {
        Command::Argv(argv) => Launch::Direct(argv.clone()),
        Command::Shell(line) => match (fast, &env, simple_words(line)) {
            (true, Some(_), Some(words)) => Launch::Direct(words),
            (_, Some(_), _) => Launch::Script(format!("{prelude}\n{line}")),
            // No cached login environment: source the profile in each command.
            (_, None, _) => Launch::Script(format!(
                "if [ -r /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi\n{prelude}\n{line}"
            )),
        },
    };
    (how, sh, is_bash, env)
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The executable `program` names in `path`, as the shell would find it.
fn find_program(program: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    path.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(program);
        let m = std::fs::metadata(&p).ok()?;
        (m.is_file() && m.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

/// Build the process: program, login environment, directory, its own process group.
pub(crate) fn command(req: &RunRequest, fast: bool) -> std::process::Command {
    let (how, sh, is_bash, env) = launch(req, fast);
    let mut cmd = match how {
        Launch::Direct(argv) => {
            let program = argv.first().map_or("", String::as_str);
            let path = req
                .env
                .get("PATH")
                .map(String::as_str)
                .or_else(|| env.as_ref().and_then(|e| lookup(e, "PATH")))
                .unwrap_or(DEFAULT_PATH);
            // An absolute program lets std use posix_spawn (vfork) instead of fork + exec per
            // PATH entry: a few hundred microseconds less per command.
            let mut c = match find_program(program, path) {
                Some(p) => std::process::Command::new(p),
                None => std::process::Command::new(program),
            };
            c.arg0(program).args(argv.iter().skip(1));
            c
        }
        Launch::Script(script) => {
            let mut c = std::process::Command::new(sh);
            if is_bash {
                c.args(["--noprofile", "--norc"]);
            }
            c.arg("-c").arg(script);
            c
        }
    };
    cmd.env_clear();
    match &env {
        Some(vars) => cmd.envs(vars.iter().map(|(k, v)| (k, v))),
        None => cmd.envs(login::BASE_ENV.iter().copied()),
    };
    cmd.env("SHELL", sh).env("PAGER", "").env("SYSTEMD_PAGER", "").envs(&req.env);
    // Commands start in the agent's own directory (/tmp, see server.rs) unless the request
    // names one: a directory per command makes std fork instead of posix_spawn (vfork) in a
    // static hutch, whose glibc offers std no posix_spawn_file_actions_addchdir_np.
    if let Some(dir) = &req.cwd {
        cmd.current_dir(dir);
    }
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}
