//! The test file exactly as written: serde structures that refuse unknown keys and wrong types.
//! Meaning (paths, sizes, defaults) is given to them by `validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The whole file: `[test]`, `[defaults]`, `[nodes.*]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub test: RawTest,
    #[serde(default)]
    pub defaults: RawNode,
    #[serde(default)]
    pub nodes: NodeMap,
}

/// `[test]`: the name, the script and the whole-test limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    pub name: String,
    pub script: Option<String>,
    #[serde(rename = "testScript")]
    pub test_script: Option<String>,
    pub timeout: Option<i64>,
}

/// One node's keys (also the shape of `[defaults]`); every key is optional here.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub image: Option<String>,
    pub toplevel: Option<String>,
    pub store: Option<String>,
    pub closure_only: Option<bool>,
    pub vlans: Option<Vec<i64>>,
    pub memory: Option<SizeValue>,
    pub pids_max: Option<i64>,
    pub tmpfs_size: Option<SizeValue>,
    pub files: Option<BTreeMap<String, String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub boot: Option<bool>,
    pub hostname: Option<String>,
    pub interfaces: Option<Vec<RawInterface>>,
    pub publish: Option<Vec<String>>,
}

/// One entry of a node's `interfaces` list: NixOS's `virtualisation.interfaces.<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInterface {
    pub name: String,
    pub vlan: i64,
    pub assign_ip: Option<bool>,
}

/// A size as written: an integer number of bytes or a string like "512M".
#[derive(Debug, Clone)]
pub(crate) enum SizeValue {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"512M\" or \"2G\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[nodes]` in file order, refusing a name given twice (JSON allows duplicate keys; TOML does not).
#[derive(Debug, Default)]
pub(crate) struct NodeMap(pub Vec<(String, RawNode)>);

impl<'de> Deserialize<'de> for NodeMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of nodes, one per name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeMap, A::Error> {
                let mut nodes: Vec<(String, RawNode)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if nodes.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "node `{name}` is defined twice; give each node one entry"
                        )));
                    }
                    let node = map.next_value::<RawNode>()?;
                    nodes.push((name, node));
                }
                Ok(NodeMap(nodes))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse a size: "512M", "2G", "1.5G", "4096", "64KiB"; binary units (K = 1024).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let unit = unit.trim();
    let unit = unit.strip_suffix("iB").or_else(|| unit.strip_suffix('B')).unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return None,
    };
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let bytes = v * mult as f64;
        (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("-5M"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
    }
}
