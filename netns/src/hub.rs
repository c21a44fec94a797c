//! The blocking face of the hub: a private network namespace with a bridge per VLAN, and the
//! calls that plug nodes in, cut their links and shape them.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::addressing::Vlan;
use crate::error::HubError;
use crate::ns;
use crate::shape::{Shape, ShapingBackend};
use crate::topology::{Node, Topology};
use crate::worker::{hub_link_name, AttachNode, Job, Request, Worker};

/// A test run's network: a private hub network namespace holding one bridge per VLAN, and the
/// veths that plug nodes into them. Nothing is created in the caller's own network namespace.
///
/// All methods block; they are served by a dedicated thread that lives in the hub namespace
/// and owns the netlink connection. From async code, call them through `spawn_blocking`.
///
/// Dropping the hub ends its thread and closes its namespace fd: the kernel then removes the
/// namespace with every bridge and veth in it, and the node ends of the veths with them.
pub struct Hub {
    topology: Topology,
    tx: Option<UnboundedSender<Request>>,
    thread: Option<JoinHandle<()>>,
    netns: OwnedFd,
    attached: Mutex<HashMap<String, Node>>,
}

/// Choices for a hub beyond its topology.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubOptions {
    /// How [`Hub::shape`] shapes links.
    pub shaping: ShapingBackend,
}

impl Hub {
    /// Creates the hub namespace and a bridge for every VLAN of `topology`.
    pub fn new(topology: &Topology) -> Result<Hub, HubError> {
        Hub::with_options(topology, HubOptions::default())
    }

    /// [`Hub::new`] with options.
    pub fn with_options(topology: &Topology, options: HubOptions) -> Result<Hub, HubError> {
        let (tx, rx) = unbounded_channel::<Request>();
        let (ready_tx, ready_rx) = sync_channel::<Result<OwnedFd, HubError>>(1);
        let thread = std::thread::Builder::new()
            .name("hutch-netns-hub".into())
            .spawn(move || {
                let start = || -> Result<(OwnedFd, tokio::runtime::Runtime), HubError> {
                    ns::unshare_thread_netns()?;
                    let fd = ns::current_thread_netns()?;
                    tune_hub_sysctls();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                        .map_err(|e| HubError::Namespace {
                            what: "building the netlink thread's runtime",
                            hint: "",
                            source: e,
                        })?;
                    Ok((fd, rt))
                };
                let (fd, rt) = match start() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let dup = fd.try_clone().map_err(|e| HubError::Namespace {
                        what: "duplicating the hub namespace fd",
                        hint: "",
                        source: e,
                    });
                    let worker = dup.and_then(|dup| Worker::new(fd, options.shaping).map(|w| (w, dup)));
                    match worker {
                        Ok((worker, dup)) => {
                            let _ = ready_tx.send(Ok(dup));
                            worker.run(rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| HubError::Namespace {
                what: "spawning the hub thread",
                hint: "",
                source: e,
            })?;
        let netns = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(HubError::WorkerGone),
        };
        let hub = Hub {
            topology: topology.clone(),
            tx: Some(tx),
            thread: Some(thread),
            netns,
            attached: Mutex::new(HashMap::new()),
        };
        hub.call(Job::Bridges(topology.vlans()))?;
        Ok(hub)
    }

    /// The topology this hub serves.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The hub's network namespace, for inspection (tests, debugging). Keeping a duplicate of
    /// this fd keeps the namespace and its links alive after the hub is dropped.
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Plugs the node named `node` into each of its VLANs: one veth per VLAN, its node end
    /// created inside `node_netns` as `eth1`, `eth2`, ... with the node's MAC and addresses,
    /// lo up, no default route.
    pub fn attach(&self, node: &str, node_netns: BorrowedFd<'_>) -> Result<(), HubError> {
        self.attach_many(&[(node, node_netns)])
    }

    /// [`Hub::attach`] for many nodes at once, with requests pipelined (the fast path for big
    /// topologies). All or nothing: on error no node of the batch stays attached.
    pub fn attach_many(&self, nodes: &[(&str, BorrowedFd<'_>)]) -> Result<(), HubError> {
        let mut batch = Vec::with_capacity(nodes.len());
        for (name, fd) in nodes {
            let node = self.topology.node(name).ok_or_else(|| HubError::UnknownNode(name.to_string()))?;
            batch.push((node.clone(), *fd));
        }
        self.attach_nodes(batch)
    }

    /// Plugs in a node described outside the hub's topology (see [`Node::standalone`]); bridges
    /// for VLANs the topology lacks are created on the way.
    pub fn attach_node(&self, node: &Node, node_netns: BorrowedFd<'_>) -> Result<(), HubError> {
        self.attach_nodes(vec![(node.clone(), node_netns)])
    }

    fn attach_nodes(&self, batch: Vec<(Node, BorrowedFd<'_>)>) -> Result<(), HubError> {
        {
            let attached = self.lock();
            if let Some((n, _)) = batch.iter().find(|(n, _)| attached.contains_key(&n.name)) {
                return Err(HubError::AlreadyAttached(n.name.clone()));
            }
        }
        let job = batch
            .iter()
            .map(|(node, fd)| AttachNode {
                node: node.clone(),
                netns: fd.as_raw_fd(),
            })
            .collect();
        // The fds stay borrowed (open) until `call` returns: the worker uses them only until it
        // replies.
        self.call(Job::Attach(job))?;
        let mut attached = self.lock();
        for (node, _) in batch {
            attached.insert(node.name.clone(), node);
        }
        Ok(())
    }

    /// Unplugs a node: deletes its veths (both ends). Use it before attaching a node again, for
    /// example after it restarted with a new namespace. Links already gone are fine.
    pub fn detach(&self, node: &str) -> Result<(), HubError> {
        let n = self.lock().remove(node).ok_or_else(|| HubError::NotAttached(node.to_string()))?;
        let links = n.interfaces.iter().map(|i| hub_link_name(n.number, i.vlan)).collect();
        self.call(Job::Delete(links))
    }

    /// Cuts the node's link on `vlan`, or all its links with `None`: the hub end goes down, so
    /// the node sees carrier loss, as with a pulled cable.
    pub fn block(&self, node: &str, vlan: Option<u8>) -> Result<(), HubError> {
        let links = self.links(node, vlan)?;
        self.call(Job::SetUp { links, up: false })
    }

    /// Restores what [`Hub::block`] cut.
    pub fn unblock(&self, node: &str, vlan: Option<u8>) -> Result<(), HubError> {
        let links = self.links(node, vlan)?;
        self.call(Job::SetUp { links, up: true })
    }

    /// Shapes what the node receives on `vlan` (delay, jitter, loss, rate) on the hub end of its
    /// link, with netem or the user-space relay ([`HubOptions::shaping`]). Call again to change
    /// it at any time; see [`Hub::unshape`] to remove it.
    pub fn shape(&self, node: &str, vlan: u8, shape: Shape) -> Result<(), HubError> {
        shape.check().map_err(|reason| HubError::InvalidShape {
            node: node.to_string(),
            reason,
        })?;
        self.set_shape(node, vlan, Some(shape))
    }

    /// Removes the shaping of the node's link on `vlan` (no-op when there is none).
    pub fn unshape(&self, node: &str, vlan: u8) -> Result<(), HubError> {
        self.set_shape(node, vlan, None)
    }

    fn set_shape(&self, node: &str, vlan: u8, shape: Option<Shape>) -> Result<(), HubError> {
        let link = self.links(node, Some(vlan))?.remove(0);
        let vlan = Vlan::new(u32::from(vlan)).ok_or(HubError::NotOnVlan {
            node: node.to_string(),
            vlan,
        })?;
        self.call(Job::Shape { link, vlan, shape })
    }

    /// Hub-side link names of an attached node, all or the one on `vlan`.
    fn links(&self, node: &str, vlan: Option<u8>) -> Result<Vec<String>, HubError> {
        let attached = self.lock();
        let n = attached.get(node).ok_or_else(|| {
            if self.topology.node(node).is_some() {
                HubError::NotAttached(node.to_string())
            } else {
                HubError::UnknownNode(node.to_string())
            }
        })?;
        let links: Vec<String> = n
            .interfaces
            .iter()
            .filter(|i| vlan.is_none_or(|v| i.vlan.get() == v))
            .map(|i| hub_link_name(n.number, i.vlan))
            .collect();
        match (vlan, links.is_empty()) {
            (Some(v), true) => Err(HubError::NotOnVlan {
                node: node.to_string(),
                vlan: v,
            }),
            _ => Ok(links),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Node>> {
        // A panic while holding this lock leaves a plain map behind: still usable.
        self.attached.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a job to the netlink thread and waits for its result.
    fn call(&self, job: Job) -> Result<(), HubError> {
        let (reply, rx) = sync_channel(1);
        let tx = self.tx.as_ref().ok_or(HubError::WorkerGone)?;
        tx.send(Request { job, reply }).map_err(|_| HubError::WorkerGone)?;
        rx.recv().map_err(|_| HubError::WorkerGone)?
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the thread then drops its runtime, its
        // socket and its namespace fd.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Settings of the hub namespace that make its bridges plain switches. Best effort: a hub
/// without them works the same, only slower. /proc/sys/net shows the namespace of the thread
/// that opens it: this thread's, the hub's, so nothing outside the hub changes.
fn tune_hub_sysctls() {
    // Hub-side ports need no IPv6 of their own (the bridges forward IPv6 frames all the same):
    // no addresses, DAD or MLD on each port.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    // Bridged frames skip iptables/ip6tables/arptables: nodes filter in their own namespaces,
    // and the hooks cost a route lookup per frame and port (half the CPU of a busy 1000-port LAN).
    for table in ["iptables", "ip6tables", "arptables"] {
        let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{table}"), "0");
    }
}

#[cfg(test)]
mod tests {
    /// The driver shares one hub between threads (and `spawn_blocking` tasks).
    #[test]
    fn hub_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Hub>();
    }
}
