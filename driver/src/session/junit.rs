//! JUnit XML for CI: one test case per subtest, plus one for the script as a whole.

use std::fmt::Write as _;

use super::{Outcome, Report};

/// Escape text for XML attributes and content.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// The report as a JUnit XML document.
pub fn render(r: &Report) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    let mut count = 0;
    for s in &r.subtests {
        count += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            esc(&r.test),
            esc(&s.name),
            s.duration.as_secs_f64()
        );
        match &s.error {
            None => cases.push_str("/>\n"),
            Some(e) => {
                failures += 1;
                let _ = write!(
                    cases,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(e),
                    esc(s.traceback.as_deref().unwrap_or(e))
                );
            }
        }
    }
    count += 1;
    let _ = write!(
        cases,
        "    <testcase classname=\"{}\" name=\"testScript\" time=\"{:.3}\"",
        esc(&r.test),
        r.duration.as_secs_f64()
    );
    match &r.outcome {
        Outcome::Passed => cases.push_str("/>\n"),
        Outcome::Failed(f) => {
            failures += 1;
            let _ = write!(
                cases,
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                esc(&f.summary()),
                esc(&f.details())
            );
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"{count}\" failures=\"{failures}\" time=\"{t:.3}\">\n  <testsuite name=\"{name}\" tests=\"{count}\" failures=\"{failures}\" errors=\"0\" time=\"{t:.3}\">\n{cases}  </testsuite>\n</testsuites>\n",
        t = r.duration.as_secs_f64(),
        name = esc(&r.test)
    )
}
