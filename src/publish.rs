//! `hutch test --publish NODE:HOST_PORT:PORT` (or `publish = ["HOST_PORT:PORT"]` in a node's
//! table of the test file): a node's TCP port on the host's loopback for
//! the length of the test, like `docker -p 127.0.0.1:...` or QEMU's hostfwd; the script's
//! `forward_port()` publishes one the same way while it runs. A userspace relay
//! in the driver: it listens on 127.0.0.1 only, and connects to the node's port from a socket
//! made in the node's network namespace (`RuntimeNode::connect_tcp`); no address, route or
//! interface is added to the host's namespace.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::node::RuntimeNode;

/// One published port.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The node.
    pub node: String,
    /// The port on the host's 127.0.0.1.
    pub host_port: u16,
    /// The node's port (on its loopback).
    pub port: u16,
}

impl FromStr for Publish {
    type Err = String;

    fn from_str(s: &str) -> Result<Publish, String> {
        let bad = || format!("{s:?} is not NODE:HOST_PORT:PORT; write e.g. server:8080:80");
        let mut parts = s.splitn(3, ':');
        let (Some(node), Some(host), Some(port)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        match (port_of(host), port_of(port)) {
            (Some(host_port), Some(port)) if !node.is_empty() => Ok(Publish {
                node: node.to_string(),
                host_port,
                port,
            }),
            _ => Err(bad()),
        }
    }
}

/// The ports to publish: the test file's `publish` keys, then `--publish` options.
pub fn all(options: &[Publish], plan: &hutch_driver::plan::TestPlan) -> Vec<Publish> {
    let from_file = plan.nodes.iter().flat_map(|n| {
        n.publish.iter().map(|&(host_port, port)| Publish {
            node: n.name.clone(),
            host_port,
            port,
        })
    });
    from_file.chain(options.iter().cloned()).collect()
}

/// Checks that every published node is a node of the test: the message names the option,
/// the test's nodes and the fix (a bad test invocation, before anything starts).
pub fn check(publish: &[Publish], nodes: &[String]) -> Result<(), String> {
    for p in publish {
        if !nodes.contains(&p.node) {
            return Err(format!(
                "--publish {}:{}:{}: the test has no node `{}`; publish one of its nodes ({})",
                p.node,
                p.host_port,
                p.port,
                p.node,
                nodes.join(", ")
            ));
        }
    }
    Ok(())
}

/// How long a connection to the node's port may take before the host's client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds every published port on 127.0.0.1 (all before any node starts, so a port in use is
/// an error up front) and relays connections until the process ends.
pub fn start(publish: &[Publish], nodes: &[(String, Arc<RuntimeNode>)]) -> Result<()> {
    let mut bound = Vec::new();
    for p in publish {
        let (_, node) = nodes
            .iter()
            .find(|(n, _)| *n == p.node)
            .with_context(|| format!("--publish: no node `{}`", p.node))?;
        bound.push((bind(p)?, Arc::clone(node), p.clone()));
    }
    for (listener, node, p) in bound {
        serve(listener, node, p)?;
    }
    Ok(())
}

/// One port published while the test runs: the script's `forward_port(host_port, guest_port)`.
pub fn forward(p: &Publish, node: Arc<RuntimeNode>) -> Result<()> {
    serve(bind(p)?, node, p.clone())
}

fn bind(p: &Publish) -> Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, p.host_port)).with_context(|| {
        format!(
            "publishing {}:{}:{}: listening on 127.0.0.1:{}",
            p.node, p.host_port, p.port, p.host_port
        )
    })
}

/// Relays each connection to `listener` to the node's port, on threads of their own.
fn serve(listener: TcpListener, node: Arc<RuntimeNode>, p: Publish) -> Result<()> {
    std::thread::Builder::new()
        .name(format!("publish-{}", p.host_port))
        .spawn(move || {
            for client in listener.incoming().flatten() {
                let node = Arc::clone(&node);
                let port = p.port;
                let _ = std::thread::Builder::new()
                    .name("publish-conn".into())
                    .spawn(move || relay(client, &node, port));
            }
        })
        .context("starting a port relay")?;
    Ok(())
}

/// Copies bytes both ways between a host client and the node's port until both sides end.
fn relay(client: TcpStream, node: &RuntimeNode, port: u16) {
    let Ok(upstream) = node.connect_tcp(port, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut c_read), Ok(mut u_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new().name("publish-up".into()).spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    if let Ok(up) = up {
        let _ = up.join();
    }
}
