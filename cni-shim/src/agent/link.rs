//! Netlink for the node agent: veth pairs, addresses, routes and neighbours, through
//! rtnetlink. A [`Netlink`] talks to the network namespace its socket was opened in, so
//! the agent opens one in its own namespace at start and one per pod operation from inside
//! the pod's namespace (see [`super::netns`]).
//!
//! Nothing here dumps a table on the ADD path (lookups are by name, which the kernel
//! answers from a hash): a dump costs in proportion to the pods on the node.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage, LinkXdp,
};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink request that failed, naming what it tried.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl LinkError {
    /// Whether the kernel answered "exists".
    pub fn is_exists(&self) -> bool {
        is_errno(&self.source, &[nix::errno::Errno::EEXIST])
    }

    /// Whether the kernel answered "no such device" (or "not found").
    pub fn is_not_found(&self) -> bool {
        is_errno(
            &self.source,
            &[nix::errno::Errno::ENODEV, nix::errno::Errno::ENOENT],
        )
    }
}

fn is_errno(e: &rtnetlink::Error, which: &[nix::errno::Errno]) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => m
            .code
            .is_some_and(|c| which.iter().any(|w| -c.get() == *w as i32)),
        _ => false,
    }
}

/// An interface as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The id of the XDP program attached, if any.
    pub xdp_prog: Option<u32>,
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        xdp_prog: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Xdp(xdp) => {
                link.xdp_prog = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

/// A netlink socket in one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's current namespace; its connection task runs
    /// on the current tokio runtime.
    pub fn open() -> Result<Self, std::io::Error> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    fn err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let what = what.into();
        move |source| LinkError { what, source }
    }

    /// The interface named `name`, or None.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(found) => Ok(found.as_ref().map(link_of)),
            Err(e) if is_errno(&e, &[nix::errno::Errno::ENODEV]) => Ok(None),
            Err(e) => Err(Self::err(format!("looking up {name}"))(e)),
        }
    }

    /// Every interface whose name starts with `prefix`.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<Link>, LinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(Self::err("listing interfaces"))?;
        Ok(links
            .iter()
            .map(link_of)
            .filter(|l| l.name.starts_with(prefix))
            .collect())
    }

    /// The first IPv4 address of interface `index`.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<(Ipv4Addr, u8)>, LinkError> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(Self::err(format!("listing addresses of interface {index}")))?;
        Ok(addrs.iter().find_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        }))
    }

    /// The veth pair of a pod in one request: `host` in this namespace, up, and its
    /// peer `pod_ifname` directly in the namespace of `pod_netns` with `pod_mac`, down
    /// (the kernel cannot open a veth before its pair is complete), both with `mtu`.
    /// Creating the peer where it belongs spares moving it (a namespace move
    /// unregisters and re-registers the device) and one request per setting.
    pub async fn add_pod_veth(
        &self,
        host: &str,
        pod_ifname: &str,
        pod_mac: [u8; 6],
        mtu: u32,
        pod_netns: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod_ifname.to_owned())
            .address(pod_mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(pod_netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .mtu(mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Self::err(format!(
                "creating veth {host} (peer {pod_ifname} in the pod namespace)"
            )))
    }

    pub async fn up(&self, index: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Self::err(format!("bringing interface {index} up")))
    }

    /// Deletes interface `index`; Ok(false) if it did not exist.
    pub async fn delete(&self, index: u32) -> Result<bool, LinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, &[nix::errno::Errno::ENODEV]) => Ok(false),
            Err(e) => Err(Self::err(format!("deleting interface {index}"))(e)),
        }
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(Self::err(format!(
                "adding {ip}/{prefix} to interface {index}"
            )))
    }

    /// Whether interface `index` holds `ip/prefix`.
    pub async fn has_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, LinkError> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(Self::err(format!("listing addresses of interface {index}")))?;
        Ok(addrs.iter().any(|a| {
            a.header.prefix_len == prefix
                && a.attributes
                    .contains(&AddressAttribute::Address(IpAddr::V4(ip)))
        }))
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `index`.
    pub async fn add_permanent_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), LinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(Self::err(format!(
                "adding neighbour {ip} on interface {index}"
            )))
    }

    /// Whether the default route via `router` out of `index` is in place (a dump of the
    /// pod's main table, which holds a handful of routes).
    pub async fn has_default_route(&self, index: u32, router: Ipv4Addr) -> Result<bool, LinkError> {
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(Self::err("listing routes"))?;
        Ok(routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.attributes.contains(&RouteAttribute::Oif(index))
                && r.attributes
                    .contains(&RouteAttribute::Gateway(RouteAddress::Inet(router)))
        }))
    }

    /// The default route via `router` out of `index`, marked onlink so it holds whatever
    /// the interface's prefix.
    pub async fn add_default_route(&self, index: u32, router: Ipv4Addr) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(router)
            .output_interface(index)
            .scope(RouteScope::Universe)
            .onlink()
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(Self::err(format!("adding the default route via {router}")))
    }
}
