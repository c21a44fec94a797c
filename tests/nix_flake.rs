//! hutch's Nix side (flake.nix, nix/), tested offline with Debian's nix-bin: every .nix file
//! parses; the pure part (nix/, builtins only) gives nodes the numbers, addresses, MACs and hosts
//! that hutch itself computes for the same test file (the driver's `TestPlan` and the netns
//! `Topology` are built from the JSON the pure part writes, and compared with what it says the
//! nodes get); and, as root, `hutch test` runs such a JSON file on Nix-built toplevels with
//! `closure_only`, each node seeing only its own closure and reaching the others by name.
//!
//! The flake's nixpkgs parts (runTest as a backend of nixpkgs' test framework, nixosModules.node)
//! are evaluated on a stand-in nixpkgs by nixpkgs_ref.rs.

mod common;
mod nix_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hutch_driver::plan::{PlanContext, TestPlan};
use hutch_netns::{NodeSpec, Topology};
use nix_support::{fake_toplevel, nix_instantiate, repo, Scratch, NIX_CONFIG};
use serde_json::{json, Value};

/// Evaluates `(import <repo>/nix).<attr> ARGS` where ARGS is `input` passed as JSON text.
fn eval_pure(mut cmd: Command, attr: &str, input: &Value) -> Result<Value, String> {
    let expr = format!("{{ input }}: (import {}/nix).{attr} (builtins.fromJSON input)", repo().display());
    let out = cmd
        .args(["--eval", "--strict", "--json", "-E", &expr, "--argstr", "input"])
        .arg(input.to_string())
        .output()
        .expect("running nix-instantiate");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nix-instantiate printed no JSON: {e}"))
}

/// Every `*.nix` file of the repository (not build outputs or hidden directories).
fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "hutch-out" {
                nix_files(&p, out);
            }
        } else if name.ends_with(".nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let Some(_) = nix_instantiate("nix_parse") else {
        return;
    };
    let mut files = Vec::new();
    nix_files(repo(), &mut files);
    for must in [
        "flake.nix",
        "nix/default.nix",
        "nix/topology.nix",
        "nix/test-file.nix",
        "nix/module.nix",
        "nix/backend.nix",
        "nix/test-node.nix",
        "nix/run-test.nix",
    ] {
        assert!(files.contains(&repo().join(must)), "{must} is missing from {files:?}");
    }
    for f in &files {
        let out = nix_instantiate("nix_parse").unwrap().arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

#[test]
fn the_pure_part_gives_the_addresses_hutch_computes() {
    let Some(cmd) = nix_instantiate("nix_topology") else {
        return;
    };
    let dir = Scratch::new("topology");
    let top = fake_toplevel(&dir.0);
    // Three nodes on two VLANs. `Web` sorts before `db` (byte order, as Nix's attrNames and
    // hutch both sort); VLAN 12 shows the hex MAC byte (0c) and the decimal-in-hex IPv6 group;
    // the gateway's list is not ascending, so eth1 is on VLAN 12 and eth2 on VLAN 3.
    let input = json!({
        "name": "three-nodes",
        "testScript": "start_all()",
        "nodes": {
            "gateway": { "toplevel": top, "vlans": [12, 3] },
            "db": { "toplevel": top, "vlans": [12], "memory": "256M" },
            "Web": { "toplevel": top, "vlans": [3], "closure_only": true },
        },
    });
    let nix = eval_pure(cmd, "test", &input).unwrap_or_else(|e| panic!("the pure part failed:\n{e}"));
    let file = dir.0.join("three.json");
    std::fs::write(&file, text(&nix["json"])).unwrap();

    let ctx = PlanContext {
        cache_dir: dir.0.join("cache"),
    };
    let plan = TestPlan::load_with(&file, &ctx).unwrap_or_else(|e| panic!("hutch refused the generated file: {e}"));
    let topology = Topology::new(
        plan.nodes
            .iter()
            .map(|n| NodeSpec::new(n.name.clone(), n.vlans.iter().map(|&v| u32::from(v)))),
    )
    .expect("hutch's topology of the generated file");

    let net = &nix["topology"];
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["Web", "db", "gateway"]);
    let nix_vlans: Vec<u64> = net["vlans"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let plan_vlans: Vec<u64> = plan.vlans.iter().map(|&v| u64::from(v)).collect();
    assert_eq!(nix_vlans, plan_vlans, "VLAN lists");
    assert_eq!(net["nodes"].as_object().unwrap().len(), plan.nodes.len());

    for (n, t) in plan.nodes.iter().zip(topology.nodes()) {
        let m = &net["nodes"][&n.name];
        assert_eq!(t.name, n.name);
        assert_eq!(m["number"].as_u64(), Some(u64::from(n.number)), "number of {}", n.name);
        assert_eq!(t.number, n.number, "the driver and netns agree on {}", n.name);
        let ifaces = m["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), t.interfaces.len(), "interfaces of {}", n.name);
        for (nix_if, i) in ifaces.iter().zip(&t.interfaces) {
            let at = format!("{} {}", n.name, i.name);
            assert_eq!(text(&nix_if["name"]), i.name, "{at}");
            assert_eq!(nix_if["vlan"].as_u64(), Some(u64::from(i.vlan.get())), "{at}");
            assert_eq!(text(&nix_if["mac"]), i.mac.to_string(), "{at} MAC");
            assert_eq!(text(&nix_if["ipv4"]), i.ipv4.to_string(), "{at} IPv4");
            assert_eq!(nix_if["ipv4Prefix"].as_u64(), Some(u64::from(i.ipv4_prefix)), "{at}");
            assert_eq!(text(&nix_if["ipv6"]), i.ipv6.to_string(), "{at} IPv6");
            assert_eq!(nix_if["ipv6Prefix"].as_u64(), Some(u64::from(i.ipv6_prefix)), "{at}");
        }
        let first = t.interfaces.first().expect("every node here is on a VLAN");
        assert_eq!(text(&m["primaryIPAddress"]), first.ipv4.to_string());
        assert_eq!(text(&m["primaryIPv6Address"]), first.ipv6.to_string());
    }
    assert_eq!(text(&net["hosts"]), topology.hosts_file(), "the /etc/hosts text");
    assert!(topology.hosts_file().ends_with(text(&net["extraHosts"])));

    // What the file says beyond the network reached the plan unchanged.
    let db = plan.node("db").unwrap();
    assert_eq!(db.memory, Some(256 << 20));
    assert!(matches!(
        plan.node("Web").unwrap().root,
        hutch_driver::plan::NodeRoot::Toplevel { closure_only: true, .. }
    ));
    assert_eq!(plan.script.source, "start_all()");
}

#[test]
fn the_pure_part_refuses_what_hutch_refuses() {
    let Some(_) = nix_instantiate("nix_refusals") else {
        return;
    };
    let dir = Scratch::new("refusals");
    let top = fake_toplevel(&dir.0);
    let ctx = PlanContext {
        cache_dir: dir.0.join("cache"),
    };
    // Each case is one node set; hutch's driver is given the same nodes as a test file directly.
    let cases = [
        ("VLAN 0", json!({ "a": { "toplevel": top, "vlans": [0] } })),
        ("VLAN 256", json!({ "a": { "toplevel": top, "vlans": [256] } })),
        ("a VLAN twice", json!({ "a": { "toplevel": top, "vlans": [2, 2] } })),
        ("a name with a dot", json!({ "a.b": { "toplevel": top } })),
        ("a name starting with a digit", json!({ "1a": { "toplevel": top } })),
        ("an unknown key", json!({ "a": { "toplevel": top, "cpus": 2 } })),
        ("no root", json!({ "a": { "vlans": [1] } })),
    ];
    for (what, nodes) in cases {
        let input = json!({ "name": "bad", "testScript": "pass", "nodes": nodes });
        let nix = eval_pure(nix_instantiate("nix_refusals").unwrap(), "test", &input);
        assert!(nix.is_err(), "the pure part accepted {what}: {nix:?}");
        let err = nix.unwrap_err();
        assert!(err.contains("hutch:"), "{what}: the refusal should say it is hutch's: {err}");
        let file = dir.0.join("bad.json");
        std::fs::write(
            &file,
            json!({ "test": { "name": "bad", "testScript": "pass" }, "nodes": nodes }).to_string(),
        )
        .unwrap();
        assert!(TestPlan::load_with(&file, &ctx).is_err(), "hutch accepted {what}");
    }
    // 255 nodes on one VLAN: past the NixOS plan's 254 node numbers, for both.
    let many: serde_json::Map<String, Value> = (0..255).map(|i| (format!("n{i:03}"), json!([1]))).collect();
    let nix = eval_pure(nix_instantiate("nix_refusals").unwrap(), "topology", &Value::Object(many.clone()));
    assert!(nix.unwrap_err().contains("254"));
    assert!(Topology::new(many.keys().map(|k| NodeSpec::new(k.clone(), [1]))).is_err());
    // ... and 254 are fine for both.
    let fine: serde_json::Map<String, Value> = many.into_iter().take(254).collect();
    let nix = eval_pure(nix_instantiate("nix_refusals").unwrap(), "topology", &Value::Object(fine.clone())).unwrap();
    let rust = Topology::new(fine.keys().map(|k| NodeSpec::new(k.clone(), [1]))).unwrap();
    assert_eq!(text(&nix["hosts"]), rust.hosts_file());
}

/// `nix-store -qR PATH`: the store paths a toplevel needs.
fn closure(path: &Path) -> Vec<String> {
    let out = Command::new("nix-store")
        .arg("-qR")
        .arg(path)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("running nix-store");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A toplevel of its own whose `init` runs `top`'s: built here (as root, into /nix/store) so one
/// node's closure differs from the others' by exactly this path.
fn wrapped(top: &Path, busybox: &str) -> PathBuf {
    let expr = r#"{ top, busybox }:
      derivation {
        name = "nixos-system-hutch-wrapped";
        system = builtins.currentSystem;
        builder = "${builtins.storePath busybox}/bin/sh";
        args = [ "-c" ''
          export PATH=${builtins.storePath busybox}/bin
          mkdir $out
          printf '#!%s\nexec %s "$@"\n' ${busybox}/bin/sh ${builtins.storePath top}/init > $out/init
          chmod 0555 $out/init
        '' ];
      }"#;
    let out = Command::new("nix-build")
        .args(["--no-out-link", "-E", expr, "--argstr", "busybox", busybox, "--argstr", "top"])
        .arg(top)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("running nix-build");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn hutch_runs_a_generated_file_on_nix_toplevels_each_node_seeing_its_closure() {
    if skip_unless_root("nix_generated_run") {
        return;
    }
    let Some(cmd) = nix_instantiate("nix_generated_run") else {
        return;
    };
    // Debian's systemd booted NixOS-style (fixtures/nixos-shaped.sh), and the same wrapped in a
    // toplevel of its own, whose closure is one path larger.
    let systemd = nixos_shaped().to_path_buf();
    let plain = closure(&systemd);
    let busybox = plain
        .iter()
        .find(|p| p.ends_with("-busybox"))
        .expect("busybox in the closure")
        .clone();
    let wrapper = wrapped(&systemd, &busybox);
    let (plain, wrapper_closure) = (plain.len(), closure(&wrapper).len());
    assert_eq!(wrapper_closure, plain + 1);
    let in_store = std::fs::read_dir("/nix/store")
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert!(
        in_store > wrapper_closure,
        "the store ({in_store} paths) must hold more than either closure for the check to mean anything"
    );

    // alpha on VLAN 1, gateway on both, zulu on VLAN 2. Names resolve to a node's first address:
    // gateway's is on VLAN 1 and zulu's on VLAN 2, so gateway reaches both by name, alpha reaches
    // gateway by name, and zulu reaches gateway by its VLAN 2 address only.
    let node = |top: &Path, vlans: Value| json!({ "toplevel": top, "vlans": vlans, "closure_only": true, "memory": "512M" });
    let mut nodes = json!({
        "alpha": node(&systemd, json!([1])),
        "gateway": node(&wrapper, json!([1, 2])),
        "zulu": node(&systemd, json!([2])),
    });
    // gateway and zulu also share VLAN 3 through named interfaces (NixOS's
    // virtualisation.interfaces): gateway's with the plan's addresses, zulu's bare.
    nodes["gateway"]["interfaces"] = json!([{ "name": "uplink", "vlan": 3, "assign_ip": true }]);
    nodes["zulu"]["interfaces"] = json!([{ "name": "wan0", "vlan": 3 }]);
    let net = eval_pure(
        nix_instantiate("nix_generated_run").unwrap(),
        "topology",
        &json!({ "alpha": [1], "gateway": [1, 2], "zulu": [2] }),
    )
    .unwrap();
    let gateway_on_2 = text(&net["nodes"]["gateway"]["interfaces"][1]["ipv4"]).to_string();
    let alpha_ip = text(&net["nodes"]["alpha"]["primaryIPAddress"]).to_string();
    let script = format!(
        r#"start_all()
for m in (alpha, gateway, zulu):
    m.wait_for_unit("multi-user.target")
for m, want in ((alpha, {plain}), (gateway, {wrapper_closure}), (zulu, {plain})):
    got = int(m.succeed("ls /nix/store | wc -l").strip())
    assert got == want, f"{{m.name}} sees {{got}} store paths; its closure has {{want}}"
    m.fail("touch /nix/store/hutch-was-here")
with subtest("by name over the VLANs"):
    gateway.succeed("ping -c1 -W2 alpha")
    gateway.succeed("ping -c1 -W2 zulu")
    alpha.succeed("ping -c1 -W2 gateway")
    zulu.succeed("ping -c1 -W2 {gateway_on_2}")
    assert "{alpha_ip}/24" in alpha.succeed("ip -4 -o addr show eth1")
with subtest("the VLANs are apart"):
    zulu.fail("ping -c1 -W1 alpha")
with subtest("named interfaces"):
    assert "52:54:00:12:03:03" in zulu.succeed("ip -o link show wan0")
    assert "inet " not in zulu.succeed("ip -o -4 addr show wan0")
    assert "192.168.3.2/24" in gateway.succeed("ip -o -4 addr show uplink")
    zulu.succeed("ip addr add 192.168.3.99/24 dev wan0")
    zulu.succeed("ping -c1 -W2 192.168.3.2")
"#
    );
    let input = json!({ "name": "nix-generated", "testScript": script, "timeout": 300, "nodes": nodes });
    let nix = eval_pure(cmd, "test", &input).unwrap_or_else(|e| panic!("the pure part failed:\n{e}"));
    let dir = Scratch::new("run");
    let file = dir.0.join("test.json");
    std::fs::write(&file, text(&nix["json"])).unwrap();
    let (code, all) = hutch_test_clean(None, &file, &dir.0.join("out"), &[]);
    assert_eq!(code, 0, "{all}");
    assert!(all.contains("passed"), "{all}");
}

/// Nix's flake checker (`nix flake check`) on a flake that re-exports `nixosModules.node`: it
/// refused the path the flake used to export ("module must be a function or an attribute set").
/// The repository is fetched as `git+file` (its tracked files, working-tree contents), its
/// `nixpkgs` input is an empty local flake: nothing else of the repository's flake is evaluated.
#[test]
fn the_flake_checker_accepts_nixos_modules_node() {
    if skip_unless_root("nix_flake_check") {
        return;
    }
    let Some(_) = nix_instantiate("nix_flake_check") else {
        return;
    };
    if !repo().join(".git").exists() {
        eprintln!("skipping nix_flake_check: the repository is not a git checkout (it is fetched as git+file)");
        return;
    }
    let dir = Scratch::new("flake-check");
    let standin = dir.0.join("nixpkgs");
    std::fs::create_dir_all(&standin).unwrap();
    std::fs::write(standin.join("flake.nix"), "{ outputs = { self }: { lib = { }; }; }\n").unwrap();
    let flake = |export: &str| {
        format!(
            r#"{{
  inputs.hutch.url = "git+file://{repo}";
  inputs.nixpkgs.url = "path:{standin}";
  inputs.hutch.inputs.nixpkgs.follows = "nixpkgs";
  outputs = {{ hutch, ... }}: {{ nixosModules.node = {export}; }};
}}
"#,
            repo = repo().display(),
            standin = standin.display()
        )
    };
    let check = |export: &str| {
        std::fs::write(dir.0.join("flake.nix"), flake(export)).unwrap();
        let _ = std::fs::remove_file(dir.0.join("flake.lock"));
        Command::new("nix")
            .args(["flake", "check"])
            .arg(&dir.0)
            .env("NIX_CONFIG", format!("{NIX_CONFIG}\nexperimental-features = nix-command flakes"))
            .output()
            .expect("running nix flake check")
    };
    let out = check("hutch.nixosModules.node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The check means something: the path the flake exported before is refused.
    let out = check(r#"hutch.outPath + "/nix/module.nix""#);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("module must be a function or an attribute set"));
}
