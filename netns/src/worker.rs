//! The hub's netlink thread: it lives in the hub namespace, owns a current-thread tokio runtime
//! and the netlink connection, and serves the blocking [`crate::Hub`] methods one job at a time.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::mpsc::SyncSender;

use futures::{stream, StreamExt, TryStreamExt};
use rtnetlink::Handle;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::addressing::Vlan;
use crate::error::HubError;
use crate::messages::{self as msg, request, ACK, CREATE};
use crate::shape::{Shape, ShapingBackend};
use crate::shaping::Relay;
use crate::topology::Node;
use crate::{ethtool, ns, quiet};

/// How many requests the thread keeps in flight on one connection. The kernel handles each
/// request inside sendmsg; the window only saves wake-ups while keeping the replies well inside
/// the socket's receive buffer.
const WINDOW: usize = 64;
/// How many node namespaces are being configured at once (each holds one socket).
const NODE_WINDOW: usize = 32;

/// A node to wire: its description and its namespace fd, valid until the job's reply is sent.
pub(crate) struct AttachNode {
    pub node: Node,
    pub netns: RawFd,
}

/// One piece of work for the thread.
pub(crate) enum Job {
    /// Make sure these VLANs have bridges.
    Bridges(Vec<Vlan>),
    /// Wire nodes: all of them, or on error none of them.
    Attach(Vec<AttachNode>),
    /// Delete hub-side links (missing ones are fine: the node may have gone already).
    Delete(Vec<String>),
    /// Set hub-side links up or down.
    SetUp { links: Vec<String>, up: bool },
    /// Shape (or with `None` stop shaping) a hub-side link on `vlan`.
    Shape { link: String, vlan: Vlan, shape: Option<Shape> },
}

/// A job and where its result goes.
pub(crate) struct Request {
    pub job: Job,
    pub reply: SyncSender<Result<(), HubError>>,
}

/// Name of the hub-side end of a node's veth on a VLAN (fits IFNAMSIZ for any number).
pub(crate) fn hub_link_name(number: u32, vlan: Vlan) -> String {
    format!("n{number}v{vlan}")
}

fn bridge_name(vlan: Vlan) -> String {
    format!("br{vlan}")
}

pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HubError {
    let what = what.into();
    move |source| HubError::Netlink { what, source }
}

/// The thread's state.
pub(crate) struct Worker {
    pub(crate) handle: Handle,
    home: OwnedFd,
    pub(crate) bridges: HashMap<Vlan, u32>,
    /// What the caller asked for, and once known whether the kernel has netem.
    pub(crate) backend: ShapingBackend,
    pub(crate) netem_works: Option<bool>,
    /// User-space shaping relays by hub-side link name.
    pub(crate) relays: HashMap<String, Relay>,
}

impl Worker {
    /// Opens the hub connection; call on the hub thread inside the runtime.
    pub(crate) fn new(home: OwnedFd, backend: ShapingBackend) -> Result<Worker, HubError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(nl("opening a socket"))?;
        tokio::spawn(conn);
        Ok(Worker {
            handle,
            home,
            bridges: HashMap::new(),
            backend,
            netem_works: None,
            relays: HashMap::new(),
        })
    }

    /// Serves jobs until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: UnboundedReceiver<Request>) {
        while let Some(req) = rx.recv().await {
            let result = match req.job {
                Job::Bridges(vlans) => self.bridges(&vlans).await,
                Job::Attach(nodes) => self.attach(nodes).await,
                Job::Delete(links) => self.delete(links).await,
                Job::SetUp { links, up } => self.set_up(links, up).await,
                Job::Shape { link, vlan, shape } => self.shape(&link, vlan, shape).await,
            };
            // The caller may have given up waiting; nothing to do then.
            let _ = req.reply.send(result);
        }
    }

    async fn bridges(&mut self, vlans: &[Vlan]) -> Result<(), HubError> {
        for &vlan in vlans {
            if self.bridges.contains_key(&vlan) {
                continue;
            }
            let name = bridge_name(vlan);
            let mac = [0x02, 0x68, 0x75, 0x74, 0x00, vlan.get()];
            request(&self.handle, msg::new_bridge(&name, mac), CREATE)
                .await
                .map_err(nl(format!("creating bridge {name} for VLAN {vlan}")))?;
            let replies = request(&self.handle, msg::get_link(&name), 0)
                .await
                .map_err(nl(format!("looking up bridge {name}")))?;
            let index = msg::link_index(&replies).ok_or_else(|| HubError::Netlink {
                what: format!("looking up bridge {name}"),
                source: std::io::Error::other("no link in the reply"),
            })?;
            self.bridges.insert(vlan, index);
        }
        Ok(())
    }

    async fn attach(&mut self, nodes: Vec<AttachNode>) -> Result<(), HubError> {
        let mut vlans: Vec<Vlan> = nodes.iter().flat_map(|n| n.node.interfaces.iter().map(|i| i.vlan)).collect();
        vlans.sort();
        vlans.dedup();
        self.bridges(&vlans).await?;
        let mut created = Vec::new();
        let result = self.wire(&nodes, &mut created).await;
        if result.is_err() {
            // All or nothing: take back the hub-side links this batch made (only those: a
            // name that already existed belongs to someone else).
            let _ = self.delete(created).await;
        }
        result
    }

    /// Wires `nodes`; `created` collects the hub-side links made, for cleanup on failure.
    async fn wire(&self, nodes: &[AttachNode], created: &mut Vec<String>) -> Result<(), HubError> {
        // 1. Veths from the hub side, node ends created inside the nodes.
        let veths = nodes.iter().flat_map(|n| n.node.interfaces.iter().map(move |i| (n, i)));
        let mut results = stream::iter(veths)
            .map(|(n, iface)| async move {
                let hub_name = hub_link_name(n.node.number, iface.vlan);
                let bridge = self.bridges[&iface.vlan];
                let msg = msg::new_veth(&hub_name, bridge, msg::peer_in_node(iface, n.netns));
                match request(&self.handle, msg, CREATE).await {
                    Ok(_) => Ok(hub_name),
                    Err(e) => Err(nl(format!(
                        "creating veth {hub_name} <-> {}:{} on VLAN {}",
                        n.node.name, iface.name, iface.vlan
                    ))(e)),
                }
            })
            .buffer_unordered(WINDOW);
        let mut first_error = None;
        while let Some(r) = results.next().await {
            match r {
                Ok(name) => created.push(name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // Offloads so that no flooded frame goes through the shared backlog (see
        // crate::ethtool). This thread is in the hub namespace. Best effort.
        let _ = ethtool::tune_hub_ends(created.iter().map(String::as_str));
        // 2. Inside each node: lo up, addresses. Each node needs a socket opened in its
        //    namespace; opening happens synchronously (setns, socket, setns back) when the
        //    stream pulls the next node, so no other task ever runs while the thread is away.
        let home = self.home.as_fd();
        stream::iter(nodes)
            .map(|n| {
                // SAFETY: `n.netns` is an fd the caller of attach keeps open until this job's
                // reply is sent, which happens after this stream is finished.
                let fd = unsafe { BorrowedFd::borrow_raw(n.netns) };
                let opened = ns::with_netns(fd, home, || {
                    // Best effort, both: without them the LAN works, only big LANs suffer.
                    let names = || n.node.interfaces.iter().map(|i| i.name.as_str());
                    let _ = ethtool::tune_node_ends(names());
                    let _ = quiet::quiet_links(names());
                    rtnetlink::new_connection()
                });
                async move {
                    let (conn, handle, _) = opened?.map_err(nl(format!("opening a socket in node {}", n.node.name)))?;
                    let work = Box::pin(configure_node(handle, &n.node));
                    match futures::future::select(work, Box::pin(conn)).await {
                        futures::future::Either::Left((result, _conn)) => result,
                        futures::future::Either::Right(_) => Err(HubError::Netlink {
                            what: format!("configuring node {}", n.node.name),
                            source: std::io::Error::other("the node's netlink socket closed"),
                        }),
                    }
                }
            })
            .buffer_unordered(NODE_WINDOW)
            .try_collect::<()>()
            .await
    }

    async fn delete(&mut self, links: Vec<String>) -> Result<(), HubError> {
        let mut all = Vec::with_capacity(links.len());
        for link in links {
            if let Some(relay) = self.relays.remove(&link) {
                relay.task.abort();
                all.push(relay.bridge_port);
            }
            all.push(link);
        }
        self.delete_links(all).await
    }

    /// Deletes links by name; missing ones are fine.
    pub(crate) async fn delete_links(&self, links: Vec<String>) -> Result<(), HubError> {
        stream::iter(links)
            .map(|name| async move {
                match request(&self.handle, msg::del_link(&name), ACK).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
                    Err(e) => Err(nl(format!("deleting {name}"))(e)),
                }
            })
            .buffer_unordered(WINDOW)
            .try_collect::<()>()
            .await
    }

    /// The index of a hub-side link.
    pub(crate) async fn link_index(&self, name: &str) -> Result<u32, HubError> {
        let replies = request(&self.handle, msg::get_link(name), 0)
            .await
            .map_err(nl(format!("looking up {name}")))?;
        msg::link_index(&replies).ok_or_else(|| HubError::Netlink {
            what: format!("looking up {name}"),
            source: std::io::Error::other("no link in the reply"),
        })
    }

    async fn set_up(&self, links: Vec<String>, up: bool) -> Result<(), HubError> {
        let state = if up { "up" } else { "down" };
        stream::iter(links)
            .map(|name| async move {
                request(&self.handle, msg::set_link_up(0, Some(&name), up), ACK)
                    .await
                    .map_err(nl(format!("setting {name} {state}")))
                    .map(drop)
            })
            .buffer_unordered(WINDOW)
            .try_collect::<()>()
            .await
    }
}

/// Inside one node: loopback up, then each interface's IPv4 and IPv6 address (unless it is a
/// named interface without them), and the interface up.
async fn configure_node(handle: Handle, node: &Node) -> Result<(), HubError> {
    let h = &handle;
    let lo = async {
        // The loopback device is always index 1 in a network namespace.
        request(h, msg::set_link_up(1, None, true), ACK)
            .await
            .map(drop)
            .map_err(nl(format!("setting lo up in node {}", node.name)))
    };
    let ifaces = node.interfaces.iter().map(|iface| async move {
        let replies = request(h, msg::get_link(&iface.name), 0)
            .await
            .map_err(nl(format!("looking up {} in node {}", iface.name, node.name)))?;
        let index = msg::link_index(&replies).ok_or_else(|| HubError::Netlink {
            what: format!("looking up {} in node {}", iface.name, node.name),
            source: std::io::Error::other("no link in the reply"),
        })?;
        let what = |a: &dyn std::fmt::Display| format!("adding {a} to {} in node {}", iface.name, node.name);
        let up = request(h, msg::set_link_up(index, None, true), ACK);
        if iface.assign_ip {
            let v4 = request(h, msg::new_address(index, iface.ipv4.into(), iface.ipv4_prefix), CREATE);
            let v6 = request(h, msg::new_address(index, iface.ipv6.into(), iface.ipv6_prefix), CREATE);
            let (r4, r6, up) = futures::join!(v4, v6, up);
            r4.map_err(nl(what(&iface.ipv4)))?;
            r6.map_err(nl(what(&iface.ipv6)))?;
            up.map_err(nl(format!("setting {} up in node {}", iface.name, node.name)))?;
        } else {
            up.await.map_err(nl(format!("setting {} up in node {}", iface.name, node.name)))?;
        }
        Ok::<(), HubError>(())
    });
    let (lo, ifaces) = futures::join!(lo, futures::future::try_join_all(ifaces));
    lo?;
    ifaces?;
    Ok(())
}
