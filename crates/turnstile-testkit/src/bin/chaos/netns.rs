//! Network namespaces for the etcd sidecars, made with Debian's iproute2
//! (`ip netns`, veth pairs): each sidecar gets a namespace with two links to
//! the host, one to etcd and one to its clients, so that a partition cuts
//! exactly one path. Everything made is removed on drop, also after a panic.
//!
//! Addresses (slot `N` is the first free one, so runs can overlap): sidecar
//! `i`'s etcd link is `10.77.N.(8i+1)` (host, where etcd listens) ↔
//! `10.77.N.(8i+2)` (namespace); its client link is `10.77.N.(8i+5)` (host)
//! ↔ `10.77.N.(8i+6)` (namespace, where the sidecar listens).
//!
//! The partition sets the host end of the etcd link down. The namespace end
//! then has no carrier: its packets are dropped silently, and its route stays
//! (marked linkdown), as a cable pulled between two switches. On the host
//! the connected route goes; a blackhole route of higher metric, made with
//! the link, keeps etcd's replies from leaving by the default route.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

/// How many slots (10.77.N.0/24) a machine offers to concurrent runs.
const SLOTS: u8 = 64;

/// The namespaces, links and routes of one run.
#[derive(Debug)]
pub(crate) struct Netns {
    slot: u8,
    names: Vec<String>,
    /// Host ends of the links, deleted on drop (their peers go with them).
    links: Vec<String>,
    /// Routes added on the host, deleted on drop.
    routes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        format!("cannot run `ip` ({e}): the partition nemesis needs Debian's iproute2 (apt-get install -y iproute2)")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Makes `n` namespaces and their links in the first free slot. `Err`
    /// says why not (not root, the kernel refuses namespaces, no iproute2),
    /// with whatever was made already removed.
    pub(crate) fn create(n: usize) -> Result<Netns, String> {
        let mut last = String::new();
        for slot in 0..SLOTS {
            let first = format!("tschaos{slot}-0");
            // Another run holds the slot, or a killed one left it behind.
            if ip(&["link", "show", &format!("tsc{slot}e0")]).is_ok() {
                continue;
            }
            if let Err(e) = ip(&["netns", "add", &first]) {
                if e.contains("File exists") {
                    continue;
                }
                return Err(format!("network namespaces are refused here: {e}"));
            }
            let mut net = Netns { slot, names: vec![first], links: Vec::new(), routes: Vec::new() };
            match net.build(n) {
                Ok(()) => return Ok(net),
                Err(e) => last = e, // dropped: undone
            }
            return Err(format!("could not set up the network namespaces: {last}"));
        }
        Err(format!("no free slot among {SLOTS} (10.77.0-{}.0/24) for network namespaces: {last}", SLOTS - 1))
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        for i in 0..n {
            let name = format!("tschaos{}-{i}", self.slot);
            if i > 0 {
                ip(&["netns", "add", &name])?;
                self.names.push(name.clone());
            }
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            for (kind, host, inner, peer) in [
                ('e', self.etcd_host(i), self.addr(i, 2), "etcd0"),
                ('c', self.addr(i, 5), self.sidecar_addr(i), "cli0"),
            ] {
                let link = format!("tsc{}{kind}{i}", self.slot);
                ip(&["link", "add", &link, "type", "veth", "peer", "name", peer, "netns", &name])?;
                self.links.push(link.clone());
                ip(&["addr", "add", &format!("{host}/30"), "dev", &link])?;
                ip(&["link", "set", &link, "up"])?;
                ip(&["-n", &name, "addr", "add", &format!("{inner}/30"), "dev", peer])?;
                ip(&["-n", &name, "link", "set", peer, "up"])?;
                if kind == 'e' {
                    let net = format!("{}/30", self.addr(i, 0));
                    ip(&["route", "add", "blackhole", &net, "metric", "4000"])?;
                    self.routes.push(net);
                }
            }
        }
        Ok(())
    }

    fn addr(&self, i: usize, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.slot, 8 * i as u8 + host)
    }

    /// Namespace `i`'s name.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The host end of sidecar `i`'s etcd link (etcd listens there).
    pub(crate) fn etcd_host(&self, i: usize) -> Ipv4Addr {
        self.addr(i, 1)
    }

    /// The host ends of every etcd link.
    pub(crate) fn etcd_hosts(&self) -> Vec<Ipv4Addr> {
        (0..self.names.len()).map(|i| self.etcd_host(i)).collect()
    }

    /// Sidecar `i`'s address in its namespace (clients connect there).
    pub(crate) fn sidecar_addr(&self, i: usize) -> Ipv4Addr {
        self.addr(i, 6)
    }

    /// Cuts sidecar `i`'s link to etcd.
    pub(crate) fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &format!("tsc{}e{i}", self.slot), "down"]).map(drop)
    }

    /// Joins it again.
    pub(crate) fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &format!("tsc{}e{i}", self.slot), "up"]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for net in &self.routes {
            let _ = ip(&["route", "del", "blackhole", net, "metric", "4000"]);
        }
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for name in &self.names {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("chaos: could not remove network namespace {name}: {e}");
            }
        }
    }
}
