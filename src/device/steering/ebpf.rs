//! Just enough eBPF to write the steering program by hand: the instruction
//! layout of `struct bpf_insn`, the opcodes the program uses, and a tiny
//! assembler with forward labels.
//!
//! The names follow `include/uapi/linux/bpf.h` and `bpf_common.h`; the
//! semantics are those of the kernel's instruction set document
//! (`Documentation/bpf/standardization/instruction-set.rst`).

/// A register, `R0`–`R10`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reg(pub(crate) u8);

/// Return value; result of `LD_ABS`/`LD_IND`.
pub(crate) const R0: Reg = Reg(0);
/// First argument: the context (`struct __sk_buff *`) on entry.
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R3: Reg = Reg(3);
pub(crate) const R4: Reg = Reg(4);
pub(crate) const R5: Reg = Reg(5);
/// Callee-saved; `LD_ABS`/`LD_IND` take the context from here.
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const R8: Reg = Reg(8);
pub(crate) const R9: Reg = Reg(9);
/// Read-only frame pointer; the stack is the 512 bytes below it.
pub(crate) const R10: Reg = Reg(10);

// Instruction classes.
pub(crate) const BPF_LD: u8 = 0x00;
pub(crate) const BPF_LDX: u8 = 0x01;
pub(crate) const BPF_STX: u8 = 0x03;
pub(crate) const BPF_JMP: u8 = 0x05;
pub(crate) const BPF_ALU64: u8 = 0x07;

// Load/store sizes and modes.
pub(crate) const BPF_W: u8 = 0x00;
pub(crate) const BPF_H: u8 = 0x08;
pub(crate) const BPF_B: u8 = 0x10;
pub(crate) const BPF_DW: u8 = 0x18;
pub(crate) const BPF_IMM: u8 = 0x00;
pub(crate) const BPF_ABS: u8 = 0x20;
pub(crate) const BPF_IND: u8 = 0x40;
pub(crate) const BPF_MEM: u8 = 0x60;

// Operand source.
pub(crate) const BPF_K: u8 = 0x00;
pub(crate) const BPF_X: u8 = 0x08;

// ALU operations.
pub(crate) const BPF_ADD: u8 = 0x00;
pub(crate) const BPF_SUB: u8 = 0x10;
pub(crate) const BPF_OR: u8 = 0x40;
pub(crate) const BPF_AND: u8 = 0x50;
pub(crate) const BPF_LSH: u8 = 0x60;
pub(crate) const BPF_RSH: u8 = 0x70;
pub(crate) const BPF_MOD: u8 = 0x90;
pub(crate) const BPF_XOR: u8 = 0xa0;
pub(crate) const BPF_MOV: u8 = 0xb0;

// Jump operations (unsigned comparisons).
pub(crate) const BPF_JA: u8 = 0x00;
pub(crate) const BPF_JEQ: u8 = 0x10;
pub(crate) const BPF_JGE: u8 = 0x30;
pub(crate) const BPF_JNE: u8 = 0x50;
pub(crate) const BPF_EXIT: u8 = 0x90;
pub(crate) const BPF_JLT: u8 = 0xa0;

/// Most instructions the kernel accepts in a program loaded without
/// `CAP_BPF`/`CAP_SYS_ADMIN` (`BPF_MAXINSNS`); the steering program stays
/// under it so it loads wherever socket filters may be loaded.
pub(crate) const MAX_INSNS: usize = 4096;

/// One instruction slot, laid out as the kernel's `struct bpf_insn`: opcode,
/// two 4-bit register fields, a 16-bit offset and a 32-bit immediate, in the
/// host's byte order. `LD_IMM64` takes two slots.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        // C bit-fields `dst_reg:4, src_reg:4` fill the byte from its least
        // significant bit on little-endian targets, from the most on big.
        let regs = if cfg!(target_endian = "little") {
            dst.0 | (src.0 << 4)
        } else {
            (dst.0 << 4) | src.0
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    /// The slot's eight bytes, as the kernel reads them.
    #[cfg(test)]
    pub(crate) fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }

    /// The destination register field.
    #[cfg(test)]
    pub(crate) fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    /// The source register field.
    #[cfg(test)]
    pub(crate) fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }
}

// `repr(C)` places the fields at offsets 0, 1, 2 and 4, as in C.
const _: () = assert!(std::mem::size_of::<Insn>() == 8);

/// A jump target, bound to an instruction index with [`Asm::bind`].
#[derive(Copy, Clone, Debug)]
pub(crate) struct Label(usize);

/// Why an instruction sequence could not be assembled. Only a bug in the
/// program generator produces one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AsmError {
    /// A label was jumped to but never bound.
    Unbound,
    /// A label was bound twice.
    Rebound,
    /// A jump goes backwards or to itself (the program is loop-free).
    Backward,
    /// More than [`MAX_INSNS`] slots.
    TooLong(usize),
}

/// Builds an instruction sequence; jumps name [`Label`]s that are resolved
/// by [`finish`](Self::finish).
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    error: Option<AsmError>,
}

impl Asm {
    pub(crate) fn new() -> Asm {
        Asm::default()
    }

    /// A new, unbound label.
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Bind `label` to the next instruction.
    pub(crate) fn bind(&mut self, label: Label) {
        let slot = &mut self.labels[label.0];
        if slot.is_some() {
            self.error.get_or_insert(AsmError::Rebound);
        }
        *slot = Some(self.insns.len());
    }

    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// `dst op= imm` on 64 bits (`imm` sign-extended).
    pub(crate) fn alu_imm(&mut self, op: u8, dst: Reg, imm: i32) {
        self.push(Insn::new(BPF_ALU64 | op | BPF_K, dst, R0, 0, imm));
    }

    /// `dst op= src` on 64 bits.
    pub(crate) fn alu_reg(&mut self, op: u8, dst: Reg, src: Reg) {
        self.push(Insn::new(BPF_ALU64 | op | BPF_X, dst, src, 0, 0));
    }

    /// `dst = imm` (64-bit, two slots).
    pub(crate) fn ld_imm64(&mut self, dst: Reg, imm: u64) {
        self.push(Insn::new(
            BPF_LD | BPF_DW | BPF_IMM,
            dst,
            R0,
            0,
            imm as u32 as i32,
        ));
        self.push(Insn::new(0, R0, R0, 0, (imm >> 32) as u32 as i32));
    }

    /// `R0 = packet[off]` as a big-endian value of `size`; a load past the
    /// end ends the program with 0. Clobbers `R1`–`R5`; needs the context
    /// in `R6`.
    pub(crate) fn ld_abs(&mut self, size: u8, off: i32) {
        self.push(Insn::new(BPF_LD | size | BPF_ABS, R0, R0, 0, off));
    }

    /// `R0 = packet[src + off]`, otherwise as [`ld_abs`](Self::ld_abs).
    pub(crate) fn ld_ind(&mut self, size: u8, src: Reg, off: i32) {
        self.push(Insn::new(BPF_LD | size | BPF_IND, R0, src, 0, off));
    }

    /// `dst = *(u64 *)(src + off)`.
    pub(crate) fn ldx_dw(&mut self, dst: Reg, src: Reg, off: i16) {
        self.push(Insn::new(BPF_LDX | BPF_DW | BPF_MEM, dst, src, off, 0));
    }

    /// `*(u64 *)(dst + off) = src`.
    pub(crate) fn stx_dw(&mut self, dst: Reg, off: i16, src: Reg) {
        self.push(Insn::new(BPF_STX | BPF_DW | BPF_MEM, dst, src, off, 0));
    }

    fn jump(&mut self, insn: Insn, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.push(insn);
    }

    /// `if dst op imm goto target` (64-bit, unsigned, `imm` sign-extended).
    pub(crate) fn jmp_imm(&mut self, op: u8, dst: Reg, imm: i32, target: Label) {
        self.jump(Insn::new(BPF_JMP | op | BPF_K, dst, R0, 0, imm), target);
    }

    /// `goto target`.
    pub(crate) fn ja(&mut self, target: Label) {
        self.jump(Insn::new(BPF_JMP | BPF_JA, R0, R0, 0, 0), target);
    }

    /// `return R0`.
    pub(crate) fn exit(&mut self) {
        self.push(Insn::new(BPF_JMP | BPF_EXIT, R0, R0, 0, 0));
    }

    /// Resolve the jumps.
    pub(crate) fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.insns.len() > MAX_INSNS {
            return Err(AsmError::TooLong(self.insns.len()));
        }
        for &(at, label) in &self.fixups {
            let target = self.labels[label.0].ok_or(AsmError::Unbound)?;
            if target <= at {
                return Err(AsmError::Backward);
            }
            // Below MAX_INSNS (4096), so it fits the 16-bit offset.
            self.insns[at].off = (target - at - 1) as i16;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_struct_bpf_insn() {
        let mut a = Asm::new();
        // r7 = r1 (mov64 reg): 0xbf, dst 7, src 1.
        a.alu_reg(BPF_MOV, R7, R1);
        a.ld_imm64(R2, 0x1122_3344_5566_7788);
        let insns = a.finish().unwrap();
        let bytes = insns[0].to_bytes();
        assert_eq!(bytes[0], 0xbf);
        if cfg!(target_endian = "little") {
            assert_eq!(bytes[1], 0x17);
        }
        assert_eq!((insns[0].dst(), insns[0].src()), (7, 1));
        assert_eq!(insns[1].code, 0x18);
        assert_eq!(insns[1].imm as u32, 0x5566_7788);
        assert_eq!(insns[2].imm as u32, 0x1122_3344);
    }

    #[test]
    fn labels_resolve_forward_and_mistakes_are_caught() {
        let mut a = Asm::new();
        let end = a.label();
        a.jmp_imm(BPF_JEQ, R0, 1, end);
        a.alu_imm(BPF_MOV, R0, 2);
        a.ld_imm64(R1, 0);
        a.bind(end);
        a.exit();
        let insns = a.finish().unwrap();
        assert_eq!(insns[0].off, 3);

        let mut a = Asm::new();
        let nowhere = a.label();
        a.ja(nowhere);
        assert_eq!(a.finish(), Err(AsmError::Unbound));

        let mut a = Asm::new();
        let back = a.label();
        a.bind(back);
        a.ja(back);
        assert_eq!(a.finish(), Err(AsmError::Backward));

        let mut a = Asm::new();
        let twice = a.label();
        a.bind(twice);
        a.exit();
        a.bind(twice);
        assert_eq!(a.finish(), Err(AsmError::Rebound));

        let mut a = Asm::new();
        for _ in 0..=MAX_INSNS {
            a.exit();
        }
        assert_eq!(a.finish(), Err(AsmError::TooLong(MAX_INSNS + 1)));
    }
}
