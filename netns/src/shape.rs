//! Link shaping: a netem qdisc's options, encoded by hand because netlink-packet-route does not
//! model netem (its TCA_OPTIONS is a C struct followed by nested attributes, not a plain list).

use std::time::Duration;

/// How a node's link on one VLAN misbehaves. Applied to the traffic the hub delivers to the node
/// on that link, so a ping from or to the node sees `delay` once per round trip and loses about
/// `loss_percent` of its round trips.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Shape {
    /// Added one-way delay.
    pub delay: Duration,
    /// Random variation of the delay, uniform in `delay ± jitter`.
    pub jitter: Duration,
    /// Share of packets dropped at random, 0.0..=100.0.
    pub loss_percent: f64,
    /// Link rate in bits per second (`None`: unlimited). Emulated by netem's own rate option,
    /// which delays each packet by its transmission time at this rate.
    pub rate_bits_per_sec: Option<u64>,
}

/// Which mechanism shapes links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapingBackend {
    /// netem where the kernel has it, user space otherwise (decided at the first shape).
    #[default]
    Auto,
    /// Only a netem qdisc; shaping fails with a clear error on kernels without `sch_netem`.
    Netem,
    /// Only the user-space relay (see the crate docs): works on any kernel with veth and packet
    /// sockets, costs a copy per frame through the hub thread.
    UserSpace,
}

/// Packets netem holds at most (tc's default).
const NETEM_LIMIT: u32 = 1000;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;

impl Shape {
    /// Checks the ranges; the message says which field is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.loss_percent.is_finite() || !(0.0..=100.0).contains(&self.loss_percent) {
            return Err(format!(
                "loss_percent {} is outside 0..=100: give a percentage such as 20.0",
                self.loss_percent
            ));
        }
        let max = Duration::from_nanos(i64::MAX as u64);
        if self.delay > max || self.jitter > max {
            return Err("delay or jitter exceeds 292 years: give a realistic duration".into());
        }
        if self.rate_bits_per_sec == Some(0) {
            return Err("rate_bits_per_sec is 0, which would stop all traffic: use block() to cut a link, or None for no limit".into());
        }
        Ok(())
    }

    /// The TCA_OPTIONS payload for a netem qdisc: `struct tc_netem_qopt` then nested
    /// attributes. Every field is always sent: netem keeps an omitted rate from an earlier change.
    pub(crate) fn netem_options(&self) -> Vec<u8> {
        let loss = ((self.loss_percent / 100.0) * f64::from(u32::MAX)).round() as u32;
        let mut out = Vec::with_capacity(96);
        // struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter } (latency and
        // jitter in scheduler ticks: left 0, the 64-bit nanosecond attributes override them).
        for field in [0u32, NETEM_LIMIT, loss, 0, 0, 0] {
            out.extend_from_slice(&field.to_ne_bytes());
        }
        let rate_bytes = self.rate_bits_per_sec.map_or(0, |b| b.div_ceil(8));
        let rate32 = u32::try_from(rate_bytes).unwrap_or(u32::MAX);
        // struct tc_netem_rate { rate, packet_overhead, cell_size, cell_overhead }
        let mut rate = Vec::with_capacity(16);
        for field in [rate32, 0, 0, 0] {
            rate.extend_from_slice(&field.to_ne_bytes());
        }
        push_nla(&mut out, TCA_NETEM_RATE, &rate);
        if rate_bytes > u64::from(u32::MAX) {
            push_nla(&mut out, TCA_NETEM_RATE64, &rate_bytes.to_ne_bytes());
        }
        let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        push_nla(&mut out, TCA_NETEM_LATENCY64, &ns(self.delay).to_ne_bytes());
        push_nla(&mut out, TCA_NETEM_JITTER64, &ns(self.jitter).to_ne_bytes());
        out
    }
}

/// Appends one netlink attribute (length, type, value, padding to 4 bytes).
fn push_nla(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (len.next_multiple_of(4) - len), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_layout() {
        let s = Shape {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(10),
            loss_percent: 100.0,
            rate_bits_per_sec: Some(8_000_000),
        };
        let b = s.netem_options();
        // 24 bytes of qopt, rate attr 20, latency 12, jitter 12.
        assert_eq!(b.len(), 24 + 20 + 12 + 12);
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(4), NETEM_LIMIT);
        assert_eq!(u32_at(8), u32::MAX);
        assert_eq!(u16::from_ne_bytes([b[24], b[25]]), 20);
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), TCA_NETEM_RATE);
        assert_eq!(u32_at(28), 1_000_000);
        assert_eq!(u16::from_ne_bytes([b[46], b[47]]), TCA_NETEM_LATENCY64);
        let lat = i64::from_ne_bytes(b[48..56].try_into().unwrap());
        assert_eq!(lat, 100_000_000);
    }

    #[test]
    fn ranges() {
        let bad = Shape {
            loss_percent: 120.0,
            ..Shape::default()
        };
        assert!(bad.check().unwrap_err().contains("loss_percent"));
        let nan = Shape {
            loss_percent: f64::NAN,
            ..Shape::default()
        };
        assert!(nan.check().is_err());
        assert!(Shape::default().check().is_ok());
    }
}
