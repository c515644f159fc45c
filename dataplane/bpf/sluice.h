/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Sluice wire contract for the XDP programs: every number the gateway and the
 * stubs must agree on to exchange Geneve packets (DESIGN.md, "Wire contract").
 *
 * The Rust side is dataplane/src/wire/contract.rs. Each constant here has the same
 * name and value as there, and dataplane/tests/contract_header.rs fails when the two
 * disagree or one side has a constant the other lacks. Keep one plain
 * `#define NAME VALUE` per line between the markers (a literal, or a parenthesised sum of
 * literals), so that test can read them without a C preprocessor.
 */
#ifndef SLUICE_H
#define SLUICE_H

/* BEGIN WIRE CONTRACT */
#define GENEVE_UDP_PORT 6081
#define GENEVE_PROTO_ETHERNET 0x6558
#define SLUICE_OPTION_CLASS 0xFF01
#define OPT_HOST_HINT 0x01
#define OPT_DIRECT 0x02
#define OPT_SERVICE_ORIG 0x03
#define OPT_STALE 0x04
#define OPTION_CRITICAL_BIT 0x80
#define UDP_SRC_PORT_BASE 49152
#define UDP_SRC_PORT_RANGE 16384
#define OUTER_TTL 64
#define ENCAP_MTU_OVERHEAD 100
#define OUTER_HEADERS_LEN (14 + 20 + 8 + 8)
/* END WIRE CONTRACT */

#endif /* SLUICE_H */
