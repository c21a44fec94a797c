//! Test files: a valid file becomes the expected plan, and every kind of mistake is refused with
//! a message naming the file, the key and the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hutch_driver::plan::{cache_dir_from, Format, NodeRoot, PlanContext, TestPlan};

/// A scratch directory with an image, a script, a NixOS-like toplevel and a site file.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("hutch-plan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["img/etc", "site", "cache/images/debian", "system", "notsystem"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("test.py"), "machine.succeed('true')\n").unwrap();
        std::fs::write(dir.join("site/post.html"), "Hello").unwrap();
        std::fs::write(dir.join("system/init"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("system/init"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("notsystem/init"), "not executable").unwrap();
        Fixture { dir }
    }

    fn ctx(&self) -> PlanContext {
        PlanContext {
            cache_dir: self.dir.join("cache"),
        }
    }

    fn parse(&self, name: &str, text: &str) -> Result<TestPlan, String> {
        let path = self.dir.join(name);
        TestPlan::parse(text, &path, Format::of(&path), &self.ctx()).map_err(|e| e.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const HEAD: &str = "[test]\nname = \"t\"\nscript = \"test.py\"\n";

#[test]
fn the_nginx_file_becomes_a_plan() {
    let f = Fixture::new("ok");
    let text = r#"
[test]
name = "nginx"
script = "test.py"
timeout = 600

[defaults]
image = "debian"
vlans = [1]
memory = "512M"

[nodes.server]
files = { "/var/www/html/posts/integration-containers" = "site/post.html" }
memory = 1048576

[nodes.web-client]
image = "img"
vlans = [2, 1]
env = { FOO = "bar" }
boot = false
"#;
    let plan = f.parse("nginx.toml", text).unwrap();
    assert_eq!(plan.name, "nginx");
    assert_eq!(plan.timeout.as_secs(), 600);
    assert_eq!(plan.vlans, vec![1, 2]);
    assert_eq!(plan.script.path.as_deref(), Some(f.dir.join("test.py").as_path()));
    assert!(plan.script.source.contains("succeed"));
    let server = plan.node("server").unwrap();
    assert_eq!(server.number, 1);
    assert_eq!(server.memory, Some(1 << 20));
    assert_eq!(
        server.root,
        NodeRoot::Image {
            dir: f.dir.join("cache/images/debian")
        }
    );
    assert_eq!(server.files[0].host, f.dir.join("site/post.html"));
    assert!(server.boot);
    let client = plan.node("web-client").unwrap();
    assert_eq!(client.number, 2);
    assert_eq!(client.python_name, "web_client");
    assert_eq!(client.hostname, "web-client");
    assert_eq!(client.memory, Some(512 << 20));
    assert_eq!(client.vlans, vec![2, 1]);
    assert!(!client.boot);
    assert_eq!(client.env.get("FOO").map(String::as_str), Some("bar"));
    assert_eq!(client.root, NodeRoot::Image { dir: f.dir.join("img") });
}

#[test]
fn json_inline_script_and_toplevel() {
    let f = Fixture::new("json");
    let text = r#"{"test": {"name": "n", "testScript": "start_all()\n"},
      "nodes": {"machine": {"toplevel": "system", "closure_only": true, "vlans": []}}}"#;
    let plan = f.parse("gen.json", text).unwrap();
    assert_eq!(plan.script.source, "start_all()\n");
    assert!(plan.script.filename.ends_with("gen.json:testScript"));
    assert_eq!(plan.timeout.as_secs(), 3600);
    let m = plan.node("machine").unwrap();
    assert!(m.vlans.is_empty());
    assert_eq!(
        m.root,
        NodeRoot::Toplevel {
            path: f.dir.join("system"),
            store: None,
            closure_only: true
        }
    );
}

/// Named interfaces (NixOS's `virtualisation.interfaces`) after the VLAN list's; their VLANs
/// are the test's too.
#[test]
fn named_interfaces_are_planned() {
    let f = Fixture::new("ifaces");
    let text = r#"{"test": {"name": "n", "testScript": "pass"},
      "nodes": {"a": {"toplevel": "system", "vlans": [1],
        "interfaces": [{"name": "enp1s0", "vlan": 4, "assign_ip": true}, {"name": "uplink", "vlan": 9}]}}}"#;
    let plan = f.parse("gen.json", text).unwrap();
    let a = plan.node("a").unwrap();
    let got: Vec<_> = a.interfaces.iter().map(|i| (i.name.as_str(), i.vlan, i.assign_ip)).collect();
    assert_eq!(got, [("enp1s0", 4, true), ("uplink", 9, false)]);
    assert_eq!(plan.vlans, [1, 4, 9]);
}

#[test]
fn cache_dir_follows_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into());
    assert_eq!(cache_dir_from(env(&[("HUTCH_CACHE", "/c"), ("HOME", "/h")])), Path::new("/c"));
    assert_eq!(
        cache_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
        Path::new("/x/hutch")
    );
    assert_eq!(cache_dir_from(env(&[("HOME", "/h")])), Path::new("/h/.cache/hutch"));
}

/// One malformed file: its name, its text, and a piece of the expected message.
struct Bad(&'static str, String, &'static str);

fn node(body: &str) -> String {
    format!("{HEAD}[nodes.a]\n{body}\n")
}

fn bad_cases() -> Vec<Bad> {
    let mut many = String::from(HEAD);
    many.push_str("[defaults]\nimage = \"img\"\n");
    for i in 0..255 {
        many.push_str(&format!("[nodes.n{i}]\n"));
    }
    vec![
        Bad(
            "t.toml",
            node("image = \"img\"\nmemroy = \"1G\""),
            "nodes.a.memroy: unknown field `memroy`",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nvlans = \"1\""),
            "nodes.a.vlans: invalid type: string \"1\"",
        ),
        Bad(
            "nginx.toml",
            node("image = \"img\"\nmemory = \"12Q\""),
            "nginx.toml: nodes.a.memory: \"12Q\" is not a size; write it like \"512M\" or \"2G\"",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nmemory = 0"),
            "nodes.a.memory: 0 is not more than zero",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nmemory = \"-512M\""),
            "nodes.a.memory: \"-512M\" is negative",
        ),
        Bad("t.toml", node("image = \"img\"\nmemory = \"0M\""), "nodes.a.memory: zero bytes"),
        Bad(
            "t.toml",
            node("image = \"img\"\nmemory = true"),
            "nodes.a.memory: invalid type: boolean `true`, expected a size",
        ),
        Bad("t.toml", node("vlans = [1]"), "nodes.a: has neither `image` nor `toplevel`"),
        Bad(
            "t.toml",
            node("image = \"img\"\ntoplevel = \"system\""),
            "nodes.a: sets both `image` and `toplevel`",
        ),
        Bad("t.toml", node("image = \"./nope\""), "nodes.a.image: \"./nope\" is not a directory"),
        Bad(
            "t.toml",
            node("image = \"ubuntu\""),
            "nodes.a.image: \"ubuntu\" is neither a directory next to the test file",
        ),
        Bad("t.toml", node("toplevel = \"notsystem\""), "nodes.a.toplevel: \"notsystem\": "),
        Bad("t.toml", node("toplevel = \"/nix/store/missing-system\""), "does not exist"),
        Bad(
            "t.toml",
            node("image = \"img\"\nstore = \"cache\""),
            "`store` and `closure_only` apply to `toplevel` nodes only",
        ),
        Bad(
            "t.json",
            r#"{"test":{"name":"t","script":"test.py"},"nodes":{"a":{"image":"img"},"a":{"image":"img"}}}"#.into(),
            "nodes: node `a` is defined twice",
        ),
        Bad(
            "t.json",
            r#"{"test":{"name":"t","script":"test.py","color":1},"nodes":{"a":{"image":"img"}}}"#.into(),
            "test.color: unknown field `color`",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.web-1]\n[nodes.web_1]\n"),
            "nodes.web_1: becomes the script variable `web_1`, like node `web-1`",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.Web]\n[nodes.web]\n"),
            "is the same hostname as node `Web`",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.1web]\n"),
            "nodes.1web: is not a valid node name",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.\"web.1\"]\n"),
            "nodes.web.1: is not a valid node name",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.class]\n"),
            "`class` is a Python keyword",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage=\"img\"\n[nodes.log]\n"),
            "would hide the test-script global",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nvlans = [0]"),
            "nodes.a.vlans: VLAN 0 is out of range; VLANs are 1 to 255",
        ),
        Bad("t.toml", node("image = \"img\"\nvlans = [256]"), "VLAN 256 is out of range"),
        Bad("t.toml", node("image = \"img\"\nvlans = [3, 3]"), "VLAN 3 is listed twice"),
        Bad("t.toml", many, "nodes: 255 nodes; at most 254"),
        Bad(
            "t.toml",
            "[test]\nname = \"t\"\nscript = \"missing.py\"\n[nodes.a]\nimage = \"img\"\n".into(),
            "test.script: cannot read \"missing.py\"",
        ),
        Bad(
            "t.toml",
            "[test]\nname = \"t\"\nscript = \"test.py\"\ntestScript = \"x\"\n[nodes.a]\nimage = \"img\"\n".into(),
            "test: sets both `script` and `testScript`",
        ),
        Bad(
            "t.toml",
            "[test]\nname = \"t\"\n[nodes.a]\nimage = \"img\"\n".into(),
            "test: has no script",
        ),
        Bad(
            "t.toml",
            "[test]\nname = \"t\"\nscript = \"test.py\"\ntimeout = 0\n[nodes.a]\nimage = \"img\"\n".into(),
            "test.timeout: 0 is not a positive number",
        ),
        Bad(
            "t.toml",
            "[nodes.a]\nimage = \"img\"\n".into(),
            "missing field `test`; add a [test] table",
        ),
        Bad("t.toml", HEAD.into(), "nodes: the test has no nodes"),
        Bad(
            "t.toml",
            node("image = \"img\"\npids_max = -1"),
            "nodes.a.pids_max: -1 is not a positive number",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nfiles = { \"etc/motd\" = \"site/post.html\" }"),
            "must be absolute",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nfiles = { \"/etc/motd\" = \"site/nope.html\" }"),
            "nodes.a.files.\"/etc/motd\": \"site/nope.html\" does not exist",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nhostname = \"bad host\""),
            "nodes.a.hostname: \"bad host\" is not a valid hostname",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nenv = { \"A=B\" = \"x\" }"),
            "is not a valid environment variable",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\nboot = \"yes\""),
            "nodes.a.boot: invalid type: string \"yes\", expected a boolean",
        ),
        Bad(
            "t.toml",
            format!("{HEAD}[defaults]\nimage = \"img\"\nmemory = \"lots\"\n[nodes.a]\n"),
            "defaults.memory: \"lots\" is not a size",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\ninterfaces = [ { name = \"eth1\", vlan = 2 } ]"),
            "nodes.a.interfaces[0].name: \"eth1\" is taken by another interface of the node",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\ninterfaces = [ { name = \"a/b\", vlan = 2 } ]"),
            "nodes.a.interfaces[0].name: \"a/b\" is not a name the kernel allows",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\ninterfaces = [ { name = \"up\", vlan = 1 } ]"),
            "nodes.a.interfaces[0].vlan: the node is on VLAN 1 already",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\ninterfaces = [ { name = \"up\", vlan = 300 } ]"),
            "nodes.a.interfaces[0].vlan: VLAN 300 is out of range",
        ),
        Bad(
            "t.toml",
            node("image = \"img\"\ninterfaces = [ { name = \"up\", vlan = 2, mac = \"x\" } ]"),
            "unknown field `mac`",
        ),
        Bad("t.toml", "[test\nname = 1".into(), "(line 1)"),
        Bad("t.json", "{\"test\": ".into(), "EOF while parsing"),
    ]
}

#[test]
fn malformed_files_are_refused_with_key_and_fix() {
    let f = Fixture::new("bad");
    let cases = bad_cases();
    assert!(cases.len() >= 25);
    let mut wrong = Vec::new();
    for Bad(name, text, want) in &cases {
        match f.parse(name, text) {
            Ok(_) => wrong.push(format!("accepted, wanted {want:?}:\n{text}")),
            Err(msg) => {
                if !msg.contains(want) || !msg.starts_with(&f.dir.join(name).display().to_string()) {
                    wrong.push(format!("wanted {want:?}, got {msg:?}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = Fixture::new("all");
    let err = f
        .parse("t.toml", &node("image = \"img\"\nmemory = \"12Q\"\nvlans = [0]"))
        .unwrap_err();
    assert_eq!(err.lines().count(), 2, "{err}");
}
