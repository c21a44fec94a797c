//! Local accounts from /etc/passwd, read directly.
//!
//! hutch is linked statically (.cargo/config.toml), and a static glibc's getpwuid goes through
//! NSS modules it must dlopen from the host (libnss_systemd crashed a static hutch on a uid
//! /etc/passwd did not list). The only account hutch needs is the caller's, to find its
//! /etc/subuid line by name; shadow's own tools (useradd, newuidmap) write those lines for
//! local users, and a line keyed by the numeric uid serves any other user.

/// One /etc/passwd entry: what hutch and its tests need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// The login name (what /etc/subuid lines may be keyed by).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

impl Passwd {
    /// The local account with uid `uid`, if /etc/passwd lists one.
    pub fn by_uid(uid: u32) -> Option<Passwd> {
        entries().find(|p| p.uid == uid)
    }

    /// The local account named `name`, if /etc/passwd lists one.
    pub fn by_name(name: &str) -> Option<Passwd> {
        entries().find(|p| p.name == name)
    }
}

fn entries() -> impl Iterator<Item = Passwd> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines().filter_map(parse).collect::<Vec<_>>().into_iter()
}

/// `name:password:uid:gid:gecos:home:shell`.
fn parse(line: &str) -> Option<Passwd> {
    let mut fields = line.split(':');
    let name = fields.next().filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    Some(Passwd {
        name: name.to_string(),
        uid: fields.next()?.parse().ok()?,
        gid: fields.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_what_is_not_one() {
        assert_eq!(
            parse("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"),
            Some(Passwd {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(parse("+@netgroup"), None);
        assert_eq!(parse("broken:x:notanumber:0::/:/bin/sh"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn root_is_found_by_uid_and_by_name() {
        assert_eq!(Passwd::by_uid(0).map(|p| p.name), Some("root".to_string()));
        assert_eq!(Passwd::by_name("root").map(|p| p.uid), Some(0));
    }
}
