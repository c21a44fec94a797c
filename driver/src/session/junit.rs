//! JUnit XML for CI: one test case per subtest, plus one for the script as a whole.

use std::fmt::Write as _;

use super::{Outcome, Report};

/// Text for XML attributes and content, from anything a node printed: control characters and
/// the noncharacters U+FFFE/U+FFFF (which XML 1.0 cannot carry at all) are shown escaped by
/// `safe_text`, colour codes dropped.
fn esc(s: &str) -> String {
    let safe = crate::safe_text::text(s, false);
    let mut o = String::with_capacity(safe.len());
    for c in safe.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
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
        Outcome::SessionEnded => {
            let _ = write!(
                cases,
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                esc(super::report::SESSION_ENDED)
            );
        }
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

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn every_character_a_node_can_print_is_legal_xml() {
        let all: String = (0u32..0x100).filter_map(char::from_u32).chain(['\u{fffe}', '\u{ffff}']).collect();
        let text = esc(&all);
        // XML 1.0's Char production, and no markup left unescaped.
        let legal = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
        assert!(text.chars().all(legal), "{text:?}");
        assert!(!text.contains('<') && !text.contains('"'), "{text:?}");
        assert!(
            text.contains("\\x00") && text.contains("\\x7f") && text.contains("\\u{9b}") && text.contains("\\u{ffff}"),
            "{text:?}"
        );
    }
}
