//! From the raw file to a `TestPlan`: parse (serde, with the key path of any type error), then
//! check every value and collect every problem, each with its key path and fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{parse_size, RawFile, RawNode, SizeValue};
use super::{FileCopy, Format, NodePlan, PlanContext, PlanError, Problem, Script, TestPlan};
use crate::plan::validate_names::{check_hostname, check_node_names};

/// How many nodes fit one /24: hosts 1 to 254.
const MAX_NODES: usize = 254;
/// The NixOS driver's default global timeout.
const DEFAULT_TIMEOUT: u64 = 3600;

pub(super) fn parse(text: &str, path: &Path, format: Format, ctx: &PlanContext) -> Result<TestPlan, PlanError> {
    let file = path.display().to_string();
    let (raw, type_errors) = match format {
        Format::Toml => parse_toml(text),
        Format::Json => parse_json(text).map_or_else(|e| (None, vec![e]), |raw| (Some(raw), Vec::new())),
    };
    let mut problems: Vec<Problem> = type_errors.into_iter().map(|(key, message)| Problem { key, message }).collect();
    let Some(raw) = raw else {
        return Err(PlanError { file, problems });
    };
    let base = base_dir(path);
    let mut v = Checker {
        problems: Vec::new(),
        base,
        ctx,
        file: file.clone(),
    };
    let plan = v.plan(raw, path);
    // A problem of a `[defaults]` key is found once per node that uses it: say it once.
    for p in v.problems {
        if !problems.iter().any(|q| q.key == p.key && q.message == p.message) {
            problems.push(p);
        }
    }
    if problems.is_empty() {
        if let Some(plan) = plan {
            return Ok(plan);
        }
    }
    Err(PlanError { file, problems })
}

type RawError = (Option<String>, String);

fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    let s = path.to_string();
    (s != "." && !s.is_empty()).then_some(s)
}

/// The most type errors reported from one file.
const MAX_TYPE_ERRORS: usize = 50;

/// Parses a TOML test file, reporting every key of the wrong type (not only the first): each
/// error's key is taken out and the rest parsed again. The file (what is left of it) comes
/// back when the keys that remain parse, so the checks of meaning run on them too.
fn parse_toml(text: &str) -> (Option<RawFile>, Vec<RawError>) {
    let de = toml::Deserializer::new(text);
    let first = match serde_path_to_error::deserialize::<_, RawFile>(de) {
        Ok(raw) => return (Some(raw), Vec::new()),
        Err(e) => e,
    };
    let mut errors = vec![toml_error(text, &first)];
    let Ok(mut table) = text.parse::<toml::Table>() else {
        // A syntax error: nothing more can be read.
        return (None, errors);
    };
    let mut path = first.path().to_string();
    while errors.len() < MAX_TYPE_ERRORS && remove_key(&mut table, &path) {
        match serde_path_to_error::deserialize::<_, RawFile>(toml::Value::Table(table.clone())) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => {
                // A required key taken out above: its own error says it all.
                if e.inner().message().starts_with("missing field") {
                    break;
                }
                path = e.path().to_string();
                let msg = explain(e.inner().message().trim_end().to_string());
                let msg = match line_of(text, &path) {
                    Some(l) => format!("{msg} (line {l})"),
                    None => msg,
                };
                errors.push((key_of(e.path()), msg));
            }
        }
    }
    (None, errors)
}

fn toml_error(text: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> RawError {
    let inner = e.inner();
    let line = inner.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = explain(inner.message().trim_end().to_string());
    let msg = match line {
        Some(l) => format!("{msg} (line {l})"),
        None => msg,
    };
    (key_of(e.path()), msg)
}

/// Takes the key at `path` (`nodes.b.vlans`) out of `table`; false when there is none.
fn remove_key(table: &mut toml::Table, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(*p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.remove(*last).is_some()
}

/// The line of key `path` (`nodes.b.vlans`) in the file: a `key =` line under its table's
/// header, or an inline `key =` anywhere. Only for the messages.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let (table, key) = path.rsplit_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        let is_key = l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key && current == table {
            return Some(i + 1);
        }
    }
    None
}

fn parse_json(text: &str) -> Result<RawFile, RawError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = serde_path_to_error::deserialize::<_, RawFile>(&mut de).map_err(|e| (key_of(e.path()), explain(e.inner().to_string())))?;
    de.end().map_err(|e| (None, e.to_string()))?;
    Ok(raw)
}

/// Add the fix to serde's bare messages where it is not obvious.
fn explain(msg: String) -> String {
    if msg.starts_with("missing field `test`") {
        format!("{msg}; add a [test] table with `name` and `script`")
    } else if msg.starts_with("missing field `name`") {
        format!("{msg}; give the test a name, e.g. name = \"nginx\"")
    } else {
        msg
    }
}

/// The directory relative paths start from: the test file's, made absolute.
fn base_dir(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new(""));
    let abs = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(parent)
    };
    abs.canonicalize().unwrap_or(abs)
}

pub(super) struct Checker<'a> {
    pub problems: Vec<Problem>,
    pub base: PathBuf,
    pub ctx: &'a PlanContext,
    pub file: String,
}

/// A value and the key path it came from (the node's own key or `defaults.<key>`).
pub(super) struct At<T> {
    pub value: T,
    pub key: String,
}

pub(super) fn pick<T: Clone>(node: &Option<T>, def: &Option<T>, name: &str, key: &str) -> Option<At<T>> {
    if let Some(v) = node {
        return Some(At {
            value: v.clone(),
            key: format!("nodes.{name}.{key}"),
        });
    }
    def.as_ref().map(|v| At {
        value: v.clone(),
        key: format!("defaults.{key}"),
    })
}

impl Checker<'_> {
    pub(super) fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: Some(key.into()),
            message: message.into(),
        });
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn plan(&mut self, raw: RawFile, path: &Path) -> Option<TestPlan> {
        let name = raw.test.name.trim().to_string();
        if name.is_empty() {
            self.problem("test.name", "is empty; give the test a name, e.g. name = \"nginx\"");
        }
        let script = self.script(&raw.test.script, &raw.test.test_script);
        let timeout = match raw.test.timeout {
            None => Duration::from_secs(DEFAULT_TIMEOUT),
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            Some(t) => {
                self.problem(
                    "test.timeout",
                    format!("{t} is not a positive number of seconds; write e.g. timeout = 600"),
                );
                Duration::ZERO
            }
        };
        let names: Vec<String> = raw.nodes.0.iter().map(|(n, _)| n.clone()).collect();
        if names.is_empty() {
            self.problem("nodes", "the test has no nodes; add at least one table like [nodes.machine]");
        }
        if names.len() > MAX_NODES {
            self.problem(
                "nodes",
                format!(
                    "{} nodes; at most {MAX_NODES} fit in a VLAN (192.168.<vlan>.1 to .254): split the test",
                    names.len()
                ),
            );
        }
        for (key, msg) in check_node_names(&names) {
            self.problem(key, msg);
        }
        let mut sorted = raw.nodes.0;
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut nodes = Vec::new();
        for (i, (n, node)) in sorted.iter().enumerate() {
            if let Some(p) = self.node(n, node, &raw.defaults, i as u32 + 1) {
                nodes.push(p);
            }
        }
        let vlans: BTreeSet<u8> = nodes
            .iter()
            .flat_map(|n| n.vlans.iter().copied().chain(n.interfaces.iter().map(|i| i.vlan)))
            .collect();
        Some(TestPlan {
            file: path.to_path_buf(),
            name,
            script: script?,
            timeout,
            nodes,
            vlans: vlans.into_iter().collect(),
        })
    }

    fn script(&mut self, file: &Option<String>, inline: &Option<String>) -> Option<Script> {
        match (file, inline) {
            (Some(_), Some(_)) => {
                self.problem(
                    "test",
                    "sets both `script` and `testScript`; keep one (a file, or the script inline)",
                );
                None
            }
            (None, None) => {
                self.problem("test", "has no script; set script = \"test.py\" or testScript = '''...'''");
                None
            }
            (None, Some(src)) => Some(Script {
                source: src.clone(),
                filename: format!("{}:testScript", self.file),
                path: None,
            }),
            (Some(rel), None) => {
                let p = self.resolve(rel);
                match std::fs::read_to_string(&p) {
                    Ok(source) => Some(Script {
                        source,
                        filename: p.display().to_string(),
                        path: Some(p),
                    }),
                    Err(e) => {
                        self.problem(
                            "test.script",
                            format!("cannot read {rel:?} ({}: {e}); the path is relative to the test file", p.display()),
                        );
                        None
                    }
                }
            }
        }
    }

    fn node(&mut self, name: &str, n: &RawNode, d: &RawNode, number: u32) -> Option<NodePlan> {
        let before = self.problems.len();
        let root = self.root(name, n, d);
        let vlans = match pick(&n.vlans, &d.vlans, name, "vlans") {
            None => vec![1],
            Some(At { value, key }) => self.vlans(&key, &value),
        };
        let interfaces = match pick(&n.interfaces, &d.interfaces, name, "interfaces") {
            Some(At { value, key }) => self.interfaces(&key, &value, &vlans),
            None => Vec::new(),
        };
        let memory = pick(&n.memory, &d.memory, name, "memory").and_then(|m| self.memory(m));
        let pids_max = match pick(&n.pids_max, &d.pids_max, name, "pids_max") {
            Some(At { value, .. }) if value > 0 => Some(value as u64),
            Some(At { value, key }) => {
                self.problem(key, format!("{value} is not a positive number; write e.g. pids_max = 1024"));
                None
            }
            None => None,
        };
        let tmpfs_size = pick(&n.tmpfs_size, &d.tmpfs_size, name, "tmpfs_size").and_then(|m| self.memory(m));
        let files = match pick(&n.files, &d.files, name, "files") {
            Some(f) => self.files(f),
            None => Vec::new(),
        };
        let env = match pick(&n.env, &d.env, name, "env") {
            Some(e) => self.env(e),
            None => BTreeMap::new(),
        };
        let hostname = match pick(&n.hostname, &d.hostname, name, "hostname") {
            Some(At { value, key }) => {
                if let Err(msg) = check_hostname(&value) {
                    self.problem(key, msg);
                }
                value
            }
            None => name.to_string(),
        };
        let boot = n.boot.or(d.boot).unwrap_or(true);
        if d.publish.is_some() {
            self.problem(
                "defaults.publish",
                "a host port can be published by one node only; move `publish` to the node that serves it",
            );
        }
        let publish = n
            .publish
            .as_deref()
            .map_or_else(Vec::new, |p| self.publish(&format!("nodes.{name}.publish"), p));
        if self.problems.len() != before {
            return None;
        }
        Some(NodePlan {
            name: name.to_string(),
            python_name: name.replace('-', "_"),
            number,
            root: root?,
            vlans,
            interfaces,
            memory,
            pids_max,
            tmpfs_size,
            files,
            env,
            boot,
            hostname,
            publish,
        })
    }

    /// `publish = ["8080:80"]`: host port on 127.0.0.1, then the node's port.
    fn publish(&mut self, key: &str, list: &[String]) -> Vec<(u16, u16)> {
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let mut out = Vec::new();
        for entry in list {
            match entry.split_once(':').map(|(h, g)| (port(h), port(g))) {
                Some((Some(h), Some(g))) => out.push((h, g)),
                _ => self.problem(
                    key,
                    format!(
                        "{entry:?} is not HOST_PORT:PORT; write e.g. publish = [\"8080:80\"] (127.0.0.1:8080 on the host reaches port 80)"
                    ),
                ),
            }
        }
        out
    }

    fn vlans(&mut self, key: &str, list: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in list {
            if !(1..=255).contains(&v) {
                self.problem(key, format!("VLAN {v} is out of range; VLANs are 1 to 255"));
            } else if out.contains(&(v as u8)) {
                self.problem(key, format!("VLAN {v} is listed twice; list each VLAN once"));
            } else {
                out.push(v as u8);
            }
        }
        out
    }

    fn memory(&mut self, m: At<SizeValue>) -> Option<u64> {
        let fix = "write it like \"512M\" or \"2G\"";
        let bytes = match &m.value {
            SizeValue::Bytes(b) if *b > 0 => Some(*b as u64),
            SizeValue::Bytes(b) => {
                self.problem(&m.key, format!("{b} is not more than zero; {fix}"));
                return None;
            }
            SizeValue::Text(t) if t.trim().starts_with('-') => {
                self.problem(&m.key, format!("{t:?} is negative; {fix}"));
                return None;
            }
            SizeValue::Text(t) => match parse_size(t) {
                Some(b) => Some(b),
                None => {
                    self.problem(&m.key, format!("{t:?} is not a size; {fix}"));
                    return None;
                }
            },
        };
        if bytes == Some(0) {
            self.problem(&m.key, format!("zero bytes is no memory; {fix}"));
            return None;
        }
        bytes
    }

    fn files(&mut self, f: At<BTreeMap<String, String>>) -> Vec<FileCopy> {
        let mut out = Vec::new();
        for (guest, host) in f.value {
            let key = format!("{}.{guest:?}", f.key);
            let g = Path::new(&guest);
            if !g.is_absolute() || g.components().any(|c| c == std::path::Component::ParentDir) {
                self.problem(
                    key,
                    "the path inside the node must be absolute and without `..`, e.g. \"/etc/motd\"",
                );
                continue;
            }
            let h = self.resolve(&host);
            if !h.exists() {
                self.problem(
                    key,
                    format!(
                        "{host:?} does not exist ({}); the host path is relative to the test file",
                        h.display()
                    ),
                );
                continue;
            }
            out.push(FileCopy {
                guest: g.to_path_buf(),
                host: h,
            });
        }
        out
    }

    fn env(&mut self, e: At<BTreeMap<String, String>>) -> BTreeMap<String, String> {
        for (k, v) in &e.value {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                self.problem(
                    format!("{}.{k:?}", e.key),
                    "is not a valid environment variable (no `=` or NUL in the name, no NUL in the value)",
                );
            }
        }
        e.value
    }
}
