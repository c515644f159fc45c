//! Packed hash keys. Every key carries the VNI, so overlapping tenant CIDRs never meet.

use std::net::Ipv4Addr;

/// (VNI, IPv4) for endpoints.
#[inline]
pub(crate) const fn endpoint(vni: u32, ip: u32) -> u64 {
    ((vni as u64) << 32) | ip as u64
}

/// (VNI, prefix length, network address) for subnets.
#[inline]
pub(crate) const fn subnet(vni: u32, prefix_len: u8, network: u32) -> u64 {
    ((vni as u64) << 40) | ((prefix_len as u64) << 32) | network as u64
}

/// (VNI, VIP, port, protocol number) for services.
#[inline]
pub(crate) const fn service(vni: u32, vip: u32, port: u16, protocol: u8) -> u128 {
    ((vni as u128) << 56) | ((protocol as u128) << 48) | ((port as u128) << 32) | vip as u128
}

pub(crate) fn ip(addr: Ipv4Addr) -> u32 {
    u32::from(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_fields_apart() {
        assert_ne!(endpoint(1, 2), endpoint(2, 1));
        assert_ne!(endpoint(0xFF_FFFF, 0), endpoint(0, 0xFFFF_FFFF));
        assert_ne!(subnet(1, 24, 0x0a00_0000), subnet(1, 16, 0x0a00_0000));
        assert_ne!(subnet(1, 24, 0), subnet(2, 24, 0));
        assert_ne!(service(1, 5, 80, 6), service(1, 5, 80, 17));
        assert_ne!(service(1, 5, 80, 6), service(1, 5, 81, 6));
        assert_ne!(
            service(0xFF_FFFF, 0, 0, 0),
            service(0, 0xFFFF_FFFF, 0xFFFF, 0xFF)
        );
    }
}
