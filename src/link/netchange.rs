//! Noticing that the Mac changed networks under a live connection.
//!
//! A Mac moving from Wi-Fi to Ethernet, joining another network, or getting
//! a new address keeps its old TCP socket open; nothing tells either side
//! until a write times out, which can take minutes. The link therefore
//! remembers which local address its connection leaves from and, on its
//! regular 2 s check, asks the kernel which local address it would use to
//! reach the service now. The question is a UDP `connect`, which only
//! consults the routing table: no packet leaves the Mac, and it needs no
//! platform API, so it works the same on macOS and in the tests. A different
//! answer, or no route at all, means the connection is suspect and gets an
//! immediate probe instead of waiting for the 45 s silence limit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// The path a connection takes: its peer and the local address it leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The service's address as connected.
    pub peer: SocketAddr,
    /// The Mac's address the connection uses.
    pub local: IpAddr,
}

/// What a look at the routing table found.
#[derive(Debug)]
pub enum RouteCheck {
    /// The service is still reached from the same address.
    Same,
    /// The service would now be reached from another address.
    Changed {
        /// The address the connection now would leave from.
        now: IpAddr,
    },
    /// The service cannot be reached at all (no network).
    Gone(io::Error),
}

impl Route {
    /// The route of a connected socket.
    pub fn of(local: SocketAddr, peer: SocketAddr) -> Route {
        Route {
            peer,
            local: local.ip(),
        }
    }

    /// Compares the connection's local address with the one the routing
    /// table picks for its peer now.
    pub fn check(&self) -> RouteCheck {
        match local_ip_towards(self.peer) {
            Ok(now) if now == self.local => RouteCheck::Same,
            Ok(now) => RouteCheck::Changed { now },
            Err(e) => RouteCheck::Gone(e),
        }
    }
}

/// The local address the kernel would use to reach `peer`.
pub fn local_ip_towards(peer: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(peer)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_on_an_unchanged_network_is_left_alone() {
        let peer: SocketAddr = "127.0.0.1:8787".parse().expect("addr");
        let route = Route::of("127.0.0.1:50000".parse().expect("addr"), peer);
        assert!(matches!(route.check(), RouteCheck::Same));
    }

    #[test]
    fn a_connection_whose_address_is_no_longer_used_is_suspect() {
        // As after moving from one network to another: the socket still
        // holds the old address, the routing table picks another.
        let peer: SocketAddr = "127.0.0.1:8787".parse().expect("addr");
        let route = Route::of("192.0.2.7:50000".parse().expect("addr"), peer);
        match route.check() {
            RouteCheck::Changed { now } => assert_eq!(now, IpAddr::from(Ipv4Addr::LOCALHOST)),
            other => panic!("expected a change, got {other:?}"),
        }
    }
}
