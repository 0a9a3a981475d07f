//! The steering program's code, generated for one [`Shards`].
//!
//! It computes [`packet_owner`](super::packet_owner) with the packet rules
//! of the parent module. Registers while parsing: `R6` the context (for
//! `LD_ABS`/`LD_IND`), `R7` the offset of ephemera's (local) port, `R8` the
//! offset of the peer's port, `R9` the offset of the peer's address. A load
//! past the end of the packet ends the program with 0, which is also the
//! answer for everything that is not a TCP/UDP flow, so "malformed" needs
//! no code of its own. The tails then load both ports, pick the owner by
//! the local port when it is ephemeral, and otherwise run SipHash-1-3 over
//! the peer's address and port (in `R1`–`R5`, which loads clobber, so all
//! loads come first). N, the range and the key are immediates.

use super::ebpf::*;
use super::{
    EXT_HEADERS_MAX, ICMPV4_ERRORS, ICMPV6_ERRORS, IPV6_EXT_HEADERS, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP,
};
use crate::port_table::Shards;

/// The program for `shards`.
pub(crate) fn steering_program(shards: &Shards) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    if shards.count() == 1 {
        a.alu_imm(BPF_MOV, R0, 0);
        a.exit();
        return a.finish();
    }
    let zero = a.label();
    let v4 = a.label();
    let v6 = a.label();

    a.alu_reg(BPF_MOV, R6, R1);
    a.ld_abs(BPF_B, 0);
    a.alu_imm(BPF_RSH, R0, 4);
    a.jmp_imm(BPF_JEQ, R0, 4, v4);
    a.jmp_imm(BPF_JEQ, R0, 6, v6);
    a.ja(zero);

    a.bind(v4);
    ipv4(&mut a, shards, zero);
    a.bind(v6);
    ipv6(&mut a, shards, zero);

    a.bind(zero);
    a.alu_imm(BPF_MOV, R0, 0);
    a.exit();
    a.finish()
}

/// `if R0 is one of values goto target`.
fn jump_if_any(a: &mut Asm, values: &[u8], target: Label) {
    for &v in values {
        a.jmp_imm(BPF_JEQ, R0, i32::from(v), target);
    }
}

/// `R0 = (R0 & 0x0f) * 4`: an IPv4 header length in bytes; to `zero` if
/// below 20.
fn header_length(a: &mut Asm, zero: Label) {
    a.alu_imm(BPF_AND, R0, 0x0f);
    a.alu_imm(BPF_LSH, R0, 2);
    a.jmp_imm(BPF_JLT, R0, 20, zero);
}

fn ipv4(a: &mut Asm, shards: &Shards, zero: Label) {
    let transport = a.label();
    let icmp = a.label();
    let error = a.label();
    let quoted = a.label();
    let tail = a.label();

    a.ld_abs(BPF_B, 0);
    header_length(a, zero);
    a.alu_reg(BPF_MOV, R7, R0);
    // A fragment (MF set or an offset) carries no ports, or not its own.
    a.ld_abs(BPF_H, 6);
    a.alu_imm(BPF_AND, R0, 0x3fff);
    a.jmp_imm(BPF_JNE, R0, 0, zero);
    a.ld_abs(BPF_B, 9);
    jump_if_any(a, &[PROTO_TCP, PROTO_UDP], transport);
    a.jmp_imm(BPF_JEQ, R0, i32::from(PROTO_ICMP), icmp);
    a.ja(zero);

    // Towards us: local = destination, peer = source.
    a.bind(transport);
    a.alu_reg(BPF_MOV, R8, R7);
    a.alu_imm(BPF_ADD, R7, 2);
    a.alu_imm(BPF_MOV, R9, 12);
    a.ja(tail);

    a.bind(icmp);
    a.ld_ind(BPF_B, R7, 0);
    jump_if_any(a, ICMPV4_ERRORS, error);
    a.ja(zero);

    // The quoted datagram went from us: local = its source.
    a.bind(error);
    a.alu_imm(BPF_ADD, R7, 8);
    a.ld_ind(BPF_B, R7, 0);
    a.alu_reg(BPF_MOV, R8, R0);
    a.alu_imm(BPF_RSH, R8, 4);
    a.jmp_imm(BPF_JNE, R8, 4, zero);
    header_length(a, zero);
    a.alu_reg(BPF_MOV, R8, R0);
    // Only a first fragment quotes ports.
    a.ld_ind(BPF_H, R7, 6);
    a.alu_imm(BPF_AND, R0, 0x1fff);
    a.jmp_imm(BPF_JNE, R0, 0, zero);
    a.ld_ind(BPF_B, R7, 9);
    jump_if_any(a, &[PROTO_TCP, PROTO_UDP], quoted);
    a.ja(zero);
    a.bind(quoted);
    a.alu_reg(BPF_MOV, R9, R7);
    a.alu_imm(BPF_ADD, R9, 16);
    a.alu_reg(BPF_ADD, R8, R7);
    a.alu_reg(BPF_MOV, R7, R8);
    a.alu_imm(BPF_ADD, R8, 2);

    a.bind(tail);
    ports(a, shards);
    // The peer: one word `addr << 16 | port`.
    a.ld_ind(BPF_W, R9, 0);
    a.alu_reg(BPF_MOV, R7, R0);
    a.alu_imm(BPF_LSH, R7, 16);
    a.ldx_dw(R0, R10, PEER_PORT);
    a.alu_reg(BPF_OR, R7, R0);
    siphash13(a, shards.key(), &[R7]);
    owner_of_r0(a, shards);
}

fn ipv6(a: &mut Asm, shards: &Shards, zero: Label) {
    let walked = a.label();
    let transport = a.label();
    let icmp = a.label();
    let error = a.label();
    let quoted = a.label();
    let tail = a.label();

    a.alu_imm(BPF_MOV, R7, 40);
    a.ld_abs(BPF_B, 6);
    for _ in 0..EXT_HEADERS_MAX {
        let ext = a.label();
        jump_if_any(a, IPV6_EXT_HEADERS, ext);
        a.ja(walked);
        a.bind(ext);
        // Length in 8-octet units, not counting the first 8 (RFC 8200 §4.3).
        a.ld_ind(BPF_B, R7, 1);
        a.alu_imm(BPF_ADD, R0, 1);
        a.alu_imm(BPF_LSH, R0, 3);
        a.alu_reg(BPF_MOV, R8, R0);
        a.ld_ind(BPF_B, R7, 0);
        a.alu_reg(BPF_ADD, R7, R8);
    }
    // Still an extension header after the last: falls through to `zero`.
    a.bind(walked);
    jump_if_any(a, &[PROTO_TCP, PROTO_UDP], transport);
    a.jmp_imm(BPF_JEQ, R0, i32::from(PROTO_ICMPV6), icmp);
    a.ja(zero);

    a.bind(transport);
    a.alu_reg(BPF_MOV, R8, R7);
    a.alu_imm(BPF_ADD, R7, 2);
    a.alu_imm(BPF_MOV, R9, 8);
    a.ja(tail);

    a.bind(icmp);
    a.ld_ind(BPF_B, R7, 0);
    jump_if_any(a, ICMPV6_ERRORS, error);
    a.ja(zero);

    // The quoted packet is ours, sent without extension headers.
    a.bind(error);
    a.alu_imm(BPF_ADD, R7, 8);
    a.ld_ind(BPF_B, R7, 0);
    a.alu_imm(BPF_RSH, R0, 4);
    a.jmp_imm(BPF_JNE, R0, 6, zero);
    a.ld_ind(BPF_B, R7, 6);
    jump_if_any(a, &[PROTO_TCP, PROTO_UDP], quoted);
    a.ja(zero);
    a.bind(quoted);
    a.alu_reg(BPF_MOV, R9, R7);
    a.alu_imm(BPF_ADD, R9, 24);
    a.alu_reg(BPF_MOV, R8, R7);
    a.alu_imm(BPF_ADD, R8, 40);
    a.alu_reg(BPF_MOV, R7, R8);
    a.alu_imm(BPF_ADD, R8, 2);

    a.bind(tail);
    ports(a, shards);
    // The peer: address high and low words, then the port.
    a.ld_ind(BPF_W, R9, 0);
    a.alu_reg(BPF_MOV, R7, R0);
    a.alu_imm(BPF_LSH, R7, 32);
    a.ld_ind(BPF_W, R9, 4);
    a.alu_reg(BPF_OR, R7, R0);
    a.ld_ind(BPF_W, R9, 8);
    a.stx_dw(R10, SCRATCH, R0);
    a.ld_ind(BPF_W, R9, 12);
    a.ldx_dw(R8, R10, SCRATCH);
    a.alu_imm(BPF_LSH, R8, 32);
    a.alu_reg(BPF_OR, R8, R0);
    a.ldx_dw(R9, R10, PEER_PORT);
    siphash13(a, shards.key(), &[R7, R8, R9]);
    owner_of_r0(a, shards);
}

/// Stack slot of the peer's port.
const PEER_PORT: i16 = -8;
/// Stack slot for half an IPv6 address.
const SCRATCH: i16 = -16;

/// Load the peer's port (offset `R8`) into [`PEER_PORT`] and the local port
/// (offset `R7`) into `R0`: both must be in the packet. If the local port is
/// ephemeral, return its owner; otherwise fall through.
fn ports(a: &mut Asm, shards: &Shards) {
    let not_ephemeral = a.label();
    a.ld_ind(BPF_H, R8, 0);
    a.stx_dw(R10, PEER_PORT, R0);
    a.ld_ind(BPF_H, R7, 0);
    let range = shards.ephemeral();
    // port − start, wrapping below the range, then unsigned against len.
    a.alu_imm(BPF_SUB, R0, i32::from(*range.start()));
    let len = i32::from(*range.end()) - i32::from(*range.start()) + 1;
    a.jmp_imm(BPF_JGE, R0, len, not_ephemeral);
    owner_of_r0(a, shards);
    a.bind(not_ephemeral);
}

/// `return R0 % N`.
fn owner_of_r0(a: &mut Asm, shards: &Shards) {
    a.alu_imm(BPF_MOD, R0, i32::from(shards.count()));
    a.exit();
}

const V0: Reg = R1;
const V1: Reg = R2;
const V2: Reg = R3;
const V3: Reg = R4;
const TMP: Reg = R5;

/// `R0 = SipHash-1-3(key, words)`, each word being eight message bytes in
/// little-endian order (the `siphasher` crate's `write` of `to_le_bytes`).
/// Uses `R0`–`R5`; the words must be in other registers.
fn siphash13(a: &mut Asm, key: (u64, u64), words: &[Reg]) {
    a.ld_imm64(V0, key.0 ^ 0x736f_6d65_7073_6575);
    a.ld_imm64(V1, key.1 ^ 0x646f_7261_6e64_6f6d);
    a.ld_imm64(V2, key.0 ^ 0x6c79_6765_6e65_7261);
    a.ld_imm64(V3, key.1 ^ 0x7465_6462_7974_6573);
    for &m in words {
        compress(a, m);
    }
    // The last block holds only the message length in its top byte.
    a.ld_imm64(R0, (words.len() as u64 * 8) << 56);
    compress(a, R0);
    a.alu_imm(BPF_XOR, V2, 0xff);
    for _ in 0..3 {
        sip_round(a);
    }
    a.alu_reg(BPF_MOV, R0, V0);
    a.alu_reg(BPF_XOR, R0, V1);
    a.alu_reg(BPF_XOR, R0, V2);
    a.alu_reg(BPF_XOR, R0, V3);
}

/// One message block `m`, one compression round (the "1" of 1-3).
fn compress(a: &mut Asm, m: Reg) {
    a.alu_reg(BPF_XOR, V3, m);
    sip_round(a);
    a.alu_reg(BPF_XOR, V0, m);
}

fn sip_round(a: &mut Asm) {
    a.alu_reg(BPF_ADD, V0, V1);
    rotl(a, V1, 13);
    a.alu_reg(BPF_XOR, V1, V0);
    rotl(a, V0, 32);
    a.alu_reg(BPF_ADD, V2, V3);
    rotl(a, V3, 16);
    a.alu_reg(BPF_XOR, V3, V2);
    a.alu_reg(BPF_ADD, V0, V3);
    rotl(a, V3, 21);
    a.alu_reg(BPF_XOR, V3, V0);
    a.alu_reg(BPF_ADD, V2, V1);
    rotl(a, V1, 17);
    a.alu_reg(BPF_XOR, V1, V2);
    rotl(a, V2, 32);
}

/// `r = r <<< n` (eBPF has no rotate).
fn rotl(a: &mut Asm, r: Reg, n: i32) {
    a.alu_reg(BPF_MOV, TMP, r);
    a.alu_imm(BPF_LSH, r, n);
    a.alu_imm(BPF_RSH, TMP, 64 - n);
    a.alu_reg(BPF_OR, r, TMP);
}
