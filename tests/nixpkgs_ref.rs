//! hutch as a backend of nixpkgs' own NixOS test framework, evaluated offline on a stand-in
//! nixpkgs: the real `lib` (lib.tgz), the real `nixos/lib/testing` modules, virtualisation
//! modules and test files of `../shared/nixpkgs-ref` (next to the repository; or
//! `$HUTCH_NIXPKGS_REF`), and fixtures/nixpkgs-standin for what that copy lacks (packages, the
//! rest of NixOS's options). Every shared test file evaluates through the flake's
//! `lib.runTestOn` to a test derivation whose JSON test file hutch's driver accepts, except the
//! two that need a VM, which are refused at evaluation with a message naming why. Without the
//! reference copy (a user's clone) the tests say they are skipped and why.

mod nix_support;

use std::path::Path;

use hutch_driver::plan::NodeRoot;
use hutch_netns::{InterfaceSpec, NodeSpec, Topology};
use nix_support::standin::{assert_script_compiles, plan_of, reference, text, Standin};
use nix_support::{repo, Scratch};
use serde_json::{json, Value};

/// The shared test files (relative to nixos/tests), and the two that need a VM with what their
/// refusal must name.
fn shared_tests(reference: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let root = reference.join("nixos/tests");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "nix") {
                found.push(p.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

const NEED_A_VM: [(&str, &[&str]); 2] = [
    ("kexec.nix", &["needs a VM", "node1", "virtualisation.useBootLoader", "useEFIBoot"]),
    ("keepassxc.nix", &["needs a VM", "enableOCR", "screen or keyboard of machine"]),
];

#[test]
fn every_shared_nixpkgs_test_evaluates_to_a_test_file_hutch_accepts() {
    let Some(standin) = Standin::build("nixpkgs_ref_tests") else {
        return;
    };
    let tests = shared_tests(&reference("nixpkgs_ref_tests").unwrap());
    assert!(tests.len() >= 12, "the reference copy's test files: {tests:?}");
    let scratch = Scratch::new("ref-plans");
    let (mut accepted, mut with_store_paths) = (0, 0);
    for t in &tests {
        let (result, stderr) = standin.eval(&format!("h.run (tests + \"/{t}\")"));
        if let Some((_, must)) = NEED_A_VM.iter().find(|(name, _)| name == t) {
            let err = result.expect_err(&format!("{t} needs a VM and was accepted"));
            for m in must.iter() {
                assert!(err.contains(m), "{t}: the refusal should name {m:?}:\n{err}");
            }
            continue;
        }
        let summary = result.unwrap_or_else(|e| panic!("{t} did not evaluate:\n{e}"));
        for key in ["drvPath", "driver", "driverInteractive"] {
            let p = text(&summary[key]);
            assert!(p.starts_with("/nix/store/") && p.ends_with(".drv"), "{t}: {key} = {p}");
        }
        assert!(text(&summary["drvPath"]).contains("-hutch-test-"), "{t}: hutch's test derivation");
        let plan = plan_of(&summary, &scratch.0, t);
        assert_script_compiles(&plan, t);
        let machines: Vec<&String> = summary["machines"].as_object().unwrap().keys().collect();
        let planned: Vec<&String> = plan.nodes.iter().map(|n| &n.name).collect();
        assert_eq!(planned, machines, "{t}: every machine is a hutch node");
        for n in &plan.nodes {
            let m = &summary["machines"][&n.name];
            assert_eq!(m["isContainer"], json!(true), "{t}: {}", n.name);
            assert_eq!(m["backdoor"], json!(false), "{t}: {}: no QEMU backdoor service", n.name);
            // Only its own closure, unless the script names store paths (run in the machines)
            // or the machine asks for more (containers-portforward.nix: additionalPaths).
            let refs = plan.script.source.contains("/nix/store/") || t == "containers-portforward.nix";
            assert!(
                matches!(n.root, NodeRoot::Toplevel { closure_only, .. } if closure_only != refs),
                "{t}: {}: closure_only with store paths in the script: {refs}",
                n.name
            );
            assert!(n.memory.is_some(), "{t}: {} has memorySize's limit", n.name);
        }
        assert!(!stderr.contains("hutch:"), "{t}: no hutch warning expected:\n{stderr}");
        accepted += 1;
        with_store_paths += usize::from(plan.script.source.contains("/nix/store/"));
    }
    assert_eq!(accepted, tests.len() - NEED_A_VM.len());
    assert!(with_store_paths > 0, "loki.nix's script names a store path");
    eprintln!("{accepted} nixpkgs tests evaluated and accepted; {} refused", NEED_A_VM.len());
}

/// Where an option of a machine is declared, relative to the stand-in tree or the repository.
fn declarations(standin: &Standin, options: &[&str]) -> Value {
    let list = options.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(" ");
    let (r, _) = standin.eval(&format!(
        r#"let
          t = h.self.lib.runTestOn pkgs {{ name = "decl"; nodes.a = {{ }}; testScript = ""; }};
          opts = t.config.node.type.getSubOptions [ ];
        in map (o: map toString (lib.attrByPath (lib.splitString "." o) null opts).declarations) [ {list} ]"#
    ));
    r.unwrap_or_else(|e| panic!("declarations: {e}"))
}

#[test]
fn hutch_declares_no_option_nixos_declares() {
    let Some(standin) = Standin::build("nixpkgs_ref_options") else {
        return;
    };
    // NixOS (24.11 on) declares these; hutch must import those declarations, not add its own:
    // a second declaration of diskSize made every test fail to evaluate.
    let upstream = [
        "virtualisation.diskSize",
        "virtualisation.vlans",
        "virtualisation.interfaces",
        "networking.primaryIPAddress",
    ];
    let decl = declarations(&standin, &upstream);
    let modules = standin.path().join("nixos/modules/virtualisation");
    for (o, d) in upstream.iter().zip(decl.as_array().unwrap()) {
        let files: Vec<&str> = d.as_array().unwrap().iter().map(text).collect();
        assert_eq!(files.len(), 1, "{o} is declared once: {files:?}");
        assert!(Path::new(files[0]).starts_with(&modules), "{o} is NixOS's own: {files:?}");
    }
    // The test framework's node module sets diskSize and interfaces; with them the test evaluates
    // (diskSize: ignored, with a warning).
    let (r, stderr) = standin.eval(
        r#"h.run { name = "knobs"; nodes.a.virtualisation.diskSize = 8192; nodes.a.virtualisation.cores = 4; testScript = "a.start()"; }"#,
    );
    let summary = r.unwrap_or_else(|e| panic!("{e}"));
    assert!(summary["testFile"]["nodes"]["a"].is_object());
    assert!(
        stderr.contains("hutch: test `knobs'") && stderr.contains("a: virtualisation.cores, virtualisation.diskSize"),
        "one warning naming the ignored settings:\n{stderr}"
    );
    // Named interfaces reach the test file; a machine has one interface per VLAN in hutch's
    // network, so two on one VLAN are refused.
    let (r, _) = standin.eval(r#"h.run { name = "named"; nodes.a.virtualisation.interfaces.enp1s0.vlan = 2; testScript = ""; }"#);
    let named = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        named["testFile"]["nodes"]["a"]["interfaces"],
        json!([{ "name": "enp1s0", "vlan": 2, "assign_ip": false }])
    );
    let (r, _) = standin.eval(r#"h.run { name = "shared"; nodes.a.virtualisation.vlans = [ 1 ]; nodes.a.virtualisation.interfaces.enp1s0.vlan = 1; testScript = ""; }"#);
    let err = r.expect_err("two interfaces on VLAN 1 are refused");
    assert!(err.contains("a: VLAN 1") && err.contains("a VLAN of its own"), "{err}");

    // A VM option that another NixOS module declares (as a container module might learn
    // `cores`) is that module's alone: hutch declares only what nothing else does.
    let (r, _) = standin.eval(
        r#"let t = h.self.lib.runTestOn pkgs {
            name = "future";
            extraBaseModules.options.virtualisation.cores = lib.mkOption { type = lib.types.ints.positive; default = 2; };
            nodes.a = { };
            testScript = "";
          };
        in { cores = t.config.nodes.a.virtualisation.cores; n = builtins.length (t.config.node.type.getSubOptions [ ]).virtualisation.cores.declarations; }"#,
    );
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}")), json!({ "cores": 2, "n": 1 }));

    // Where NixOS lacks the files (before 24.11), hutch's fallbacks declare the same options.
    let (r, _) = standin.eval(
        r#"let e = lib.evalModules {
             modules = [ h.self.nixosModules.node (standin + "/nixos/modules/standin/options.nix") (standin + "/nixos/modules/misc/assertions.nix") { _module.args.pkgs = pkgs; } ];
             specialArgs.modulesPath = "/nonexistent";
           };
         in {
           decl = map toString e.options.virtualisation.diskSize.declarations ++ map toString e.options.virtualisation.vlans.declarations;
           interfaces = lib.attrNames e.config.virtualisation.allInterfaces;
           diskSize = e.config.virtualisation.diskSize;
         }"#,
    );
    let v = r.unwrap_or_else(|e| panic!("{e}"));
    let fallback = repo().join("nix/fallback");
    for d in v["decl"].as_array().unwrap() {
        assert!(Path::new(text(d)).starts_with(&fallback), "{d}");
    }
    assert_eq!(v["interfaces"], json!(["eth1"]));
    assert_eq!(v["diskSize"], json!("auto"));
}

#[test]
fn machines_get_the_tests_package_set() {
    let Some(standin) = Standin::build("nixpkgs_ref_pkgs") else {
        return;
    };
    // An overlay on the package set given to runTestOn reaches the machines (node.pkgs).
    let test = r#"{
        name = "pkgs";
        nodes.a = { pkgs, ... }: { environment.systemPackages = [ pkgs.hello ]; };
        containers.b = { pkgs, ... }: { environment.systemPackages = [ pkgs.hello ]; };
        testScript = "start_all()";
      }"#;
    let (r, _) = standin.eval(&format!(
        r#"let mine = import standin {{ system = "x86_64-linux"; overlays = [ (f: p: {{ hello = p.hello.override {{ pname = "hello-overlaid"; }}; hutch = p.hello; }}) ]; }};
         in h.summary (h.self.lib.runTestOn mine {test})"#
    ));
    let s = r.unwrap_or_else(|e| panic!("{e}"));
    for m in ["a", "b"] {
        let pkgs: Vec<&str> = s["machines"][m]["systemPackages"].as_array().unwrap().iter().map(text).collect();
        assert!(pkgs.contains(&"hello-overlaid-1.0"), "{m}: {pkgs:?}");
    }
    // ... and, as upstream, makes nixpkgs.* read-only unless node.pkgsReadOnly = false.
    let (r, _) = standin.eval(r#"h.run { name = "ro"; nodes.a.nixpkgs.overlays = [ (f: p: { }) ]; testScript = ""; }"#);
    assert!(r.expect_err("nixpkgs.overlays is read-only").contains("read-only"));
    let (r, _) =
        standin.eval(r#"h.run { name = "rw"; node.pkgsReadOnly = false; nodes.a.nixpkgs.overlays = [ (f: p: { }) ]; testScript = ""; }"#);
    r.unwrap_or_else(|e| panic!("pkgsReadOnly = false: {e}"));
}

#[test]
fn the_frameworks_network_and_options_are_what_hutch_runs() {
    let Some(standin) = Standin::build("nixpkgs_ref_network") else {
        return;
    };
    // nodes and containers, defaults and containerDefaults, specialArgs, a testScript function,
    // memorySize, VLANs, an interactive override and extraPythonPackages: upstream's options.
    let test = r#"{
        name = "network";
        node.specialArgs.role = { virtualisation.vlans = [ 12 3 ]; };
        defaults.virtualisation.memorySize = 300;
        containerDefaults.hutch.pidsMax = 500;
        nodes.gateway = { role, ... }: {
          imports = [ role ];
          virtualisation.interfaces.lan9 = { vlan = 9; assignIP = true; };
          virtualisation.interfaces.bare = { vlan = 7; };
        };
        nodes.db = { virtualisation.vlans = [ 12 ]; networking.hostName = "database"; };
        containers.Web = { virtualisation.vlans = [ 3 ]; };
        interactive.nodes.db.virtualisation.memorySize = lib.mkForce 400;
        extraPythonPackages = p: [ p.pyyaml ];
        globalTimeout = 600;
        testScript = { nodes, ... }: "start_all()\nassert '${nodes.gateway.networking.primaryIPAddress}' == '192.168.12.3'";
      }"#;
    let (r, _) = standin.eval(&format!("h.run {test}"));
    let s = r.unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new("ref-network");
    let plan = plan_of(&s, &scratch.0, "network");
    assert_script_compiles(&plan, "network");
    assert_eq!(plan.timeout.as_secs(), 600);
    assert!(plan.script.source.contains("'192.168.12.3' == '192.168.12.3'"));
    let topology = Topology::new(plan.nodes.iter().map(|n| {
        NodeSpec::new(n.name.clone(), n.vlans.iter().map(|&v| u32::from(v))).with_interfaces(n.interfaces.iter().map(|i| InterfaceSpec {
            name: i.name.clone(),
            vlan: u32::from(i.vlan),
            assign_ip: i.assign_ip,
        }))
    }))
    .unwrap();
    let gateway: Vec<_> = topology
        .node("gateway")
        .unwrap()
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.vlan.get(), i.assign_ip))
        .collect();
    assert_eq!(
        gateway,
        [("eth1", 12, true), ("eth2", 3, true), ("bare", 7, false), ("lan9", 9, true)]
    );
    // What upstream's network module configured is what hutch's netns sets up: the same
    // addresses on the same interfaces, none where NixOS assigns none.
    for t in topology.nodes() {
        let m = &s["machines"][&t.name];
        let ifaces = m["interfaces"].as_object().unwrap();
        let addressed: Vec<_> = t.interfaces.iter().filter(|i| i.assign_ip).collect();
        assert_eq!(ifaces.len(), addressed.len(), "{}", t.name);
        for i in addressed {
            let nixos = &ifaces[&i.name];
            assert_eq!(
                nixos["addresses"],
                json!([{ "address": i.ipv4.to_string(), "prefixLength": i.ipv4_prefix }])
            );
            assert_eq!(
                nixos["ipv6"],
                json!([{ "address": i.ipv6.to_string(), "prefixLength": i.ipv6_prefix }])
            );
        }
        assert_eq!(text(&m["primaryIPAddress"]), t.interfaces[0].ipv4.to_string());
        // NixOS's hosts lines name the host name (db's is `database`); hutch's the node name.
        for other in topology.nodes() {
            let host = text(&s["machines"][&other.name]["hostName"]);
            let line = format!("{} {host}\n", other.interfaces[0].ipv4);
            assert!(text(&m["extraHosts"]).contains(&line), "{}: {line}", t.name);
        }
    }
    let db = plan.node("db").unwrap();
    assert_eq!((db.memory, db.hostname.as_str()), (Some(300 << 20), "database"));
    assert_eq!(plan.node("Web").unwrap().pids_max, Some(500));
    assert_eq!(
        s["machines"]["Web"]["isNspawnContainer"],
        json!(true),
        "containers keep upstream's container type"
    );
    assert_ne!(s["driver"], s["driverInteractive"]);
}

#[test]
fn the_flakes_checks_evaluate_to_test_files_hutch_accepts() {
    let Some(standin) = Standin::build("nixpkgs_ref_checks") else {
        return;
    };
    let scratch = Scratch::new("ref-checks");
    for (check, vlans) in [
        ("nginx", json!({ "client": [1], "server": [1] })),
        ("router", json!({ "client": [1], "router": [1, 2], "server": [2] })),
    ] {
        let (r, stderr) = standin.eval(&format!("h.summary h.self.checks.x86_64-linux.{check}"));
        let s = r.unwrap_or_else(|e| panic!("checks.{check}: {e}"));
        let plan = plan_of(&s, &scratch.0, check);
        assert_script_compiles(&plan, check);
        let got: serde_json::Map<String, Value> = plan.nodes.iter().map(|n| (n.name.clone(), json!(n.vlans))).collect();
        assert_eq!(Value::Object(got), vlans, "checks.{check}: the machines' VLANs");
        assert!(!stderr.contains("hutch:"), "checks.{check}: {stderr}");
    }
}

#[test]
fn every_way_in_gives_hutchs_test_and_the_rest_of_the_frameworks_options_hold() {
    let Some(standin) = Standin::build("nixpkgs_ref_ways") else {
        return;
    };
    // The same test file four ways: runTestOn, runTest with hostPkgs in the module, a finished
    // test of the framework extended with the backend, and the backend as one import of
    // nixos-lib's runTest (what a runNixOSTest user adds).
    let (r, _) = standin.eval(
        r#"let
          nixosLib = import (standin + "/nixos/lib") { };
          etcd = tests + "/etcd/etcd.nix";
          file = t: t.config.hutch.testFile;
        in {
          on = file (h.self.lib.runTestOn pkgs etcd);
          module = file (h.self.lib.runTest { imports = [ etcd ]; hostPkgs = pkgs; node.pkgs = pkgs; });
          finished = file (h.self.lib.runTest (nixosLib.runTest { imports = [ etcd ]; hostPkgs = pkgs; node.pkgs = pkgs; }));
          imported = file (nixosLib.runTest { imports = [ h.self.lib.testModule etcd ]; hostPkgs = pkgs; node.pkgs = pkgs; });
          plain = (nixosLib.runTest { imports = [ etcd ]; hostPkgs = pkgs; }).name;
        }"#,
    );
    let ways = r.unwrap_or_else(|e| panic!("{e}"));
    for way in ["module", "finished", "imported"] {
        assert_eq!(ways[way], ways["on"], "{way}");
    }
    assert_eq!(ways["on"]["nodes"]["node"]["vlans"], json!([1]));
    assert_eq!(
        ways["plain"],
        json!("vm-test-run-etcd"),
        "without the backend, the framework's QEMU test"
    );

    // Options the backend accepts without a VM: meta and passthru reach the derivation, the
    // SSH backdoor's driver argument is named in a warning, lint and type checks are accepted.
    let (r, stderr) = standin.eval(
        r#"let t = h.self.lib.runTestOn pkgs {
            name = "rest";
            nodes.a = { };
            sshBackdoor.enable = true;
            skipLint = true;
            skipTypeCheck = true;
            meta.timeout = 123;
            passthru.answer = 42;
            testScript = "a.succeed('true')";
          };
        in { inherit (t) answer; timeout = t.meta.timeout; features = t.config.rawTestDerivation.drvAttrs.requiredSystemFeatures; drv = t.drvPath; }"#,
    );
    let v = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((v["answer"].as_u64(), v["timeout"].as_u64()), (Some(42), Some(123)));
    assert!(text(&v["drv"]).contains("-hutch-test-rest"));
    assert_eq!(v["features"], json!(["uid-range"]), "the build asks for 65536 ids and /sys");
    assert!(stderr.contains("--dump-vsocks") && stderr.contains("sshBackdoor"), "{stderr}");
}
