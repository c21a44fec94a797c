//! libFuzzer target: any bytes as a test file, parsed as TOML and as JSON by `TestPlan::parse`.
//! The parser must answer with a `PlanError`, never panic. Relative paths resolve in a scratch
//! folder with a script and an image folder, so validation reaches its file checks too.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use hutch_driver::plan::{Format, PlanContext, TestPlan};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed folder, reused by every run (libFuzzer has no teardown hook).
        let dir = std::env::temp_dir().join("hutch-fuzz-plan");
        std::fs::create_dir_all(dir.join("rootfs")).expect("scratch folder");
        std::fs::write(dir.join("test.py"), "start_all()\n").expect("scratch script");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let ctx = PlanContext {
        cache_dir: dir.join("cache"),
    };
    let text = String::from_utf8_lossy(data);
    let _ = TestPlan::parse(&text, &dir.join("t.toml"), Format::Toml, &ctx);
    let _ = TestPlan::parse(&text, &dir.join("t.json"), Format::Json, &ctx);
});
