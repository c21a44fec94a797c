//! The forged-reply row's body: a node whose agent answers `read_tree` with trees no honest
//! agent sends, copied by the real Machine into `out`. Prints one `FORGED` line per attempt.

use std::path::Path;

use super::forging::{dir, file, forging_machine, link};

/// Runs the forged copies and prints what became of each.
pub fn run(out: &Path, host: &Path) {
    let (machine, tree) = forging_machine(out);
    let planted = host.join("planted").display().to_string();
    let host = host.display().to_string();
    let attempts = [
        ("an absolute entry path", vec![dir(""), file(&planted, 0o4755, "x")]),
        (
            "an entry under a link to the host",
            vec![dir(""), link("l", &host), file("l/planted", 0o644, "x")],
        ),
        ("a .. entry", vec![dir(""), file("../../hostdir/planted", 0o644, "x")]),
    ];
    for (what, entries) in attempts {
        *tree.lock().unwrap() = entries;
        match machine.copy_from_machine("/x", "") {
            Ok(p) => println!("FORGED {what}: accepted at {}", p.display()),
            Err(e) => println!("FORGED {what}: refused: {e}"),
        }
    }
}
