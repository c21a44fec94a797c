//! A node's named interfaces (`interfaces = [ { name, vlan, assign_ip } ]`): names the kernel
//! takes, unlike each other and the `eth1`, `eth2`, ... of the node's VLAN list, each on a VLAN
//! of its own (the network has one link per node and VLAN).

use super::raw::RawInterface;
use super::validate::Checker;
use super::NamedInterface;

impl Checker<'_> {
    pub(super) fn interfaces(&mut self, key: &str, list: &[RawInterface], vlans: &[u8]) -> Vec<NamedInterface> {
        let mut names: Vec<String> = (1..=vlans.len()).map(|k| format!("eth{k}")).collect();
        let mut used: Vec<u8> = vlans.to_vec();
        let mut out = Vec::new();
        for (k, i) in list.iter().enumerate() {
            let at = format!("{key}[{k}]");
            let name = &i.name;
            if name.is_empty() || name.len() > 15 {
                self.problem(
                    format!("{at}.name"),
                    format!("{name:?} must have 1 to 15 bytes (the kernel's limit); use a shorter name"),
                );
            } else if name == "." || name == ".." || name == "lo" || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
                self.problem(
                    format!("{at}.name"),
                    format!("{name:?} is not a name the kernel allows (no '/', ':' or spaces; not \"lo\"); use letters and digits"),
                );
            } else if names.contains(name) {
                self.problem(
                    format!("{at}.name"),
                    format!("{name:?} is taken by another interface of the node (`vlans` become eth1, eth2, ...); rename it"),
                );
            }
            if !(1..=255).contains(&i.vlan) {
                self.problem(format!("{at}.vlan"), format!("VLAN {} is out of range; VLANs are 1 to 255", i.vlan));
            } else if used.contains(&(i.vlan as u8)) {
                self.problem(
                    format!("{at}.vlan"),
                    format!(
                        "the node is on VLAN {} already; give each of its interfaces a VLAN of its own",
                        i.vlan
                    ),
                );
            } else {
                used.push(i.vlan as u8);
                names.push(name.clone());
                out.push(NamedInterface {
                    name: name.clone(),
                    vlan: i.vlan as u8,
                    assign_ip: i.assign_ip.unwrap_or(false),
                });
            }
        }
        out
    }
}
