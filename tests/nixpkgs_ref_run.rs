//! The network that nixpkgs' test framework describes, run by hutch: a test evaluated by the
//! framework's own modules on the stand-in nixpkgs (nix_support::standin) gives hutch's JSON test
//! file; as root, hutch boots it (each machine's toplevel replaced by the NixOS-shaped Debian
//! systemd of fixtures/nixos-shaped.sh, since the stand-in's toplevels are never built), and
//! packets go where the framework's configuration says: every address the test script uses is
//! the framework's `networking.primaryIPAddress` or `networking.interfaces` of a machine.

mod common;
mod nix_support;

use common::*;
use nix_support::standin::{text, Standin};
use nix_support::Scratch;
use serde_json::json;

#[test]
fn packets_go_where_the_frameworks_network_module_says() {
    if skip_unless_root("nixpkgs_ref_run") {
        return;
    }
    let Some(standin) = Standin::build("nixpkgs_ref_run") else {
        return;
    };
    // Web and db on one VLAN each, gateway on both plus a named interface with the plan's
    // addresses (lan9) and one without (bare).
    let (r, _) = standin.eval(
        r#"h.run {
          name = "framework-network";
          defaults.virtualisation.memorySize = 512;
          nodes.gateway = {
            virtualisation.vlans = [ 12 3 ];
            virtualisation.interfaces.lan9 = { vlan = 9; assignIP = true; };
            virtualisation.interfaces.bare.vlan = 7;
          };
          nodes.db.virtualisation.vlans = [ 12 ];
          containers.Web.virtualisation.vlans = [ 3 ];
          testScript = "start_all()";
        }"#,
    );
    let s = r.unwrap_or_else(|e| panic!("{e}"));
    let m = &s["machines"];
    let primary = |n: &str| text(&m[n]["primaryIPAddress"]).to_string();
    let lan9 = text(&m["gateway"]["interfaces"]["lan9"]["addresses"][0]["address"]).to_string();
    assert!(m["gateway"]["interfaces"].get("bare").is_none(), "NixOS gives `bare` no address");
    let (web, db, gw) = (primary("Web"), primary("db"), primary("gateway"));
    let script = format!(
        r#"start_all()
for m in (Web, db, gateway):
    m.wait_for_unit("multi-user.target")
with subtest("the framework's primary addresses"):
    gateway.succeed("ping -c1 -W2 {db}")
    gateway.succeed("ping -c1 -W2 {web}")
    db.succeed("ping -c1 -W2 {gw}")
    db.fail("ping -c1 -W1 {web}")
with subtest("named interfaces"):
    assert "{lan9}/24" in gateway.succeed("ip -o -4 addr show lan9")
    assert "inet " not in gateway.succeed("ip -o -4 addr show bare")
"#
    );
    let top = nixos_shaped().display().to_string();
    let mut file = s["testFile"].clone();
    file["test"]["testScript"] = json!(script);
    file["test"]["timeout"] = json!(300);
    for node in file["nodes"].as_object_mut().unwrap().values_mut() {
        node["toplevel"] = json!(top);
    }
    let dir = Scratch::new("ref-run");
    let path = dir.0.join("test.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let (code, all) = hutch_test_clean(None, &path, &dir.0.join("out"), &[]);
    assert_eq!(code, 0, "{all}");
    assert!(all.contains("passed"), "{all}");
}
