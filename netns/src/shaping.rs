//! Shaping a hub-side link: a netem qdisc where the kernel has one, the user-space relay
//! otherwise (see [`crate::relay`]).

use std::sync::{Arc, Mutex};

use crate::addressing::Vlan;
use crate::error::HubError;
use crate::messages::{self as msg, request, ACK, CREATE, REPLACE};
use crate::relay;
use crate::shape::{Shape, ShapingBackend};
use crate::worker::{nl, Worker};

/// A running user-space relay for one link.
pub(crate) struct Relay {
    /// The task carrying frames; aborted to stop.
    pub task: tokio::task::JoinHandle<()>,
    /// The parameters the task reads for every frame.
    pub shape: Arc<Mutex<Shape>>,
    /// The relay's bridge port (`q...`); deleting it deletes its peer (`r...`) too.
    pub bridge_port: String,
    /// The VLAN whose bridge the node link goes back to when shaping stops.
    pub vlan: Vlan,
}

/// Names of the relay's veth pair for a hub link `n<number>v<vlan>`.
fn relay_names(link: &str) -> (String, String) {
    let rest = link.strip_prefix('n').unwrap_or(link);
    (format!("q{rest}"), format!("r{rest}"))
}

impl Worker {
    /// Applies, changes or (with `None`) removes the shaping of `link`.
    pub(crate) async fn shape(&mut self, link: &str, vlan: Vlan, shape: Option<Shape>) -> Result<(), HubError> {
        let Some(shape) = shape else {
            return self.unshape(link).await;
        };
        if let Some(r) = self.relays.get(link) {
            *r.shape.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = shape;
            return Ok(());
        }
        let use_netem = match self.backend {
            ShapingBackend::Netem => true,
            ShapingBackend::UserSpace => false,
            ShapingBackend::Auto => self.netem_works != Some(false),
        };
        if use_netem {
            let index = self.link_index(link).await?;
            let netem = msg::netem_qdisc(index, shape.netem_options());
            match request(&self.handle, netem, REPLACE).await {
                Ok(_) => {
                    self.netem_works = Some(true);
                    return Ok(());
                }
                // ENOENT: "Specified qdisc kind is unknown", the kernel lacks sch_netem.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.netem_works = Some(false);
                    if self.backend == ShapingBackend::Netem {
                        return Err(HubError::NoNetem);
                    }
                }
                Err(e) => return Err(nl(format!("setting netem on {link}"))(e)),
            }
        }
        self.start_relay(link, vlan, shape).await
    }

    async fn unshape(&mut self, link: &str) -> Result<(), HubError> {
        if let Some(relay) = self.relays.remove(link) {
            // Back on the bridge first, so the node is never cut off.
            let index = self.link_index(link).await?;
            let bridge = self.bridges[&relay.vlan];
            request(&self.handle, msg::set_controller(index, bridge), ACK)
                .await
                .map_err(nl(format!("putting {link} back on its bridge")))?;
            relay.task.abort();
            return self.delete_links(vec![relay.bridge_port]).await;
        }
        if self.netem_works != Some(true) {
            return Ok(());
        }
        let index = self.link_index(link).await?;
        match request(&self.handle, msg::del_root_qdisc(index), ACK).await {
            Ok(_) => Ok(()),
            // No qdisc of ours there: nothing to remove.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(format!("removing netem from {link}"))(e)),
        }
    }

    /// Puts a relay between the node's link and its bridge.
    async fn start_relay(&mut self, link: &str, vlan: Vlan, shape: Shape) -> Result<(), HubError> {
        let (port, inner) = relay_names(link);
        let bridge = self.bridges[&vlan];
        let node_index = self.link_index(link).await?;
        request(&self.handle, msg::new_veth(&port, bridge, msg::peer_here(&inner)), CREATE)
            .await
            .map_err(nl(format!("creating relay pair {port} <-> {inner}")))?;
        let started = self.wire_relay(link, node_index, &inner, shape).await;
        match started {
            Ok(task) => {
                self.relays.insert(
                    link.to_string(),
                    Relay {
                        task: task.0,
                        shape: task.1,
                        bridge_port: port,
                        vlan,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let _ = self.delete_links(vec![port]).await;
                Err(e)
            }
        }
    }

    async fn wire_relay(
        &self,
        link: &str,
        node_index: u32,
        inner: &str,
        shape: Shape,
    ) -> Result<(tokio::task::JoinHandle<()>, Arc<Mutex<Shape>>), HubError> {
        let inner_index = self.link_index(inner).await?;
        request(&self.handle, msg::set_link_up(inner_index, None, true), ACK)
            .await
            .map_err(nl(format!("setting {inner} up")))?;
        let node_sock = relay::packet_socket(node_index).map_err(nl(format!("opening a packet socket on {link}")))?;
        let bridge_sock = relay::packet_socket(inner_index).map_err(nl(format!("opening a packet socket on {inner}")))?;
        let shape = Arc::new(Mutex::new(shape));
        let task = tokio::spawn(relay::run(node_sock, bridge_sock, shape.clone()));
        // Off the bridge last: from now on the relay carries the node's frames.
        if let Err(e) = request(&self.handle, msg::set_controller(node_index, 0), ACK).await {
            task.abort();
            return Err(nl(format!("taking {link} off its bridge"))(e));
        }
        Ok((task, shape))
    }
}
