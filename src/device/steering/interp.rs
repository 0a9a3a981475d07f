//! A user-space interpreter of the eBPF the steering program uses, with the
//! kernel's semantics for socket filters, to test the program without root.
//!
//! It implements only the opcodes the generator emits and refuses anything
//! else, and it checks what the verifier would: registers read before they
//! are written (`LD_ABS`/`LD_IND` clobber `R1`–`R5`), stack slots read
//! before they are stored, arithmetic on pointers, jumps backwards or out
//! of the program, shifts of 64 or more, division by zero, falling off the
//! end. A load past the end of the packet ends the program with 0, as the
//! kernel's `LD_ABS`/`LD_IND` do.

use super::ebpf::*;

/// What the interpreter refused, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An opcode this interpreter does not implement.
    Opcode { pc: usize, code: u8 },
    /// A register read before it was written, or after a load clobbered it.
    Uninit { pc: usize, reg: u8 },
    /// Arithmetic, comparison or return of a pointer.
    Pointer { pc: usize },
    /// A stack access that is unaligned, outside the frame or not via `R10`.
    Stack { pc: usize },
    /// A stack slot read before it was stored.
    StackUninit { pc: usize },
    /// `LD_ABS`/`LD_IND` without the context in `R6`.
    NoContext { pc: usize },
    /// A packet offset that is negative (the kernel's special `SKF_*` areas).
    NegativeOffset { pc: usize },
    /// A jump backwards or beyond the end, or a malformed `LD_IMM64`.
    Jump { pc: usize },
    /// A shift by 64 or more.
    Shift { pc: usize },
    /// `MOD` by zero.
    DivZero { pc: usize },
    /// The program ran past its last instruction.
    FellOff,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Val {
    /// The `__sk_buff` pointer.
    Ctx,
    /// The frame pointer.
    Frame,
    Scalar(u64),
}

/// Run `prog` over `packet` (data starting at the IP header); the value it
/// returns.
pub(crate) fn run(prog: &[Insn], packet: &[u8]) -> Result<u64, Fault> {
    let mut regs: [Option<Val>; 11] = [None; 11];
    regs[1] = Some(Val::Ctx);
    regs[10] = Some(Val::Frame);
    let mut stack: [Option<u64>; 64] = [None; 64];
    let mut pc = 0usize;
    loop {
        let insn = *prog.get(pc).ok_or(Fault::FellOff)?;
        let (dst, src) = (usize::from(insn.dst()), usize::from(insn.src()));
        if dst > 10 || src > 10 {
            return Err(Fault::Opcode {
                pc,
                code: insn.code,
            });
        }
        let scalar = |r: usize| match regs[r] {
            None => Err(Fault::Uninit { pc, reg: r as u8 }),
            Some(Val::Scalar(v)) => Ok(v),
            Some(_) => Err(Fault::Pointer { pc }),
        };
        let imm = insn.imm as i64 as u64;
        let class = insn.code & 0x07;
        match class {
            BPF_ALU64 => {
                let op = insn.code & 0xf0;
                if dst == 10 {
                    return Err(Fault::Pointer { pc });
                }
                let value = if op == BPF_MOV {
                    if insn.code & BPF_X != 0 {
                        // A register move may copy a pointer (`R6 = R1`).
                        regs[src].ok_or(Fault::Uninit { pc, reg: src as u8 })?
                    } else {
                        Val::Scalar(imm)
                    }
                } else {
                    let d = scalar(dst)?;
                    let operand = if insn.code & BPF_X != 0 {
                        scalar(src)?
                    } else {
                        imm
                    };
                    Val::Scalar(match op {
                        BPF_ADD => d.wrapping_add(operand),
                        BPF_SUB => d.wrapping_sub(operand),
                        BPF_OR => d | operand,
                        BPF_AND => d & operand,
                        BPF_XOR => d ^ operand,
                        BPF_LSH | BPF_RSH if operand >= 64 => return Err(Fault::Shift { pc }),
                        BPF_LSH => d << operand,
                        BPF_RSH => d >> operand,
                        BPF_MOD if operand == 0 => return Err(Fault::DivZero { pc }),
                        BPF_MOD => d % operand,
                        _ => {
                            return Err(Fault::Opcode {
                                pc,
                                code: insn.code,
                            })
                        }
                    })
                };
                regs[dst] = Some(value);
            }
            BPF_JMP => {
                let op = insn.code & 0xf0;
                if op == BPF_EXIT {
                    return scalar(0);
                }
                let taken = if op == BPF_JA {
                    true
                } else {
                    let d = scalar(dst)?;
                    let s = if insn.code & BPF_X != 0 {
                        scalar(src)?
                    } else {
                        imm
                    };
                    match op {
                        BPF_JEQ => d == s,
                        BPF_JNE => d != s,
                        BPF_JGE => d >= s,
                        BPF_JLT => d < s,
                        _ => {
                            return Err(Fault::Opcode {
                                pc,
                                code: insn.code,
                            })
                        }
                    }
                };
                if taken {
                    if insn.off < 0 || pc + 1 + insn.off as usize >= prog.len() {
                        return Err(Fault::Jump { pc });
                    }
                    pc += insn.off as usize;
                }
            }
            BPF_LD if insn.code == BPF_LD | BPF_DW | BPF_IMM => {
                let high = prog.get(pc + 1).ok_or(Fault::Jump { pc })?;
                if high.code != 0 {
                    return Err(Fault::Jump { pc });
                }
                let v = u64::from(insn.imm as u32) | (u64::from(high.imm as u32) << 32);
                regs[dst] = Some(Val::Scalar(v));
                pc += 1;
            }
            BPF_LD => {
                let mode = insn.code & 0xe0;
                let size = match insn.code & 0x18 {
                    BPF_B => 1,
                    BPF_H => 2,
                    BPF_W => 4,
                    _ => {
                        return Err(Fault::Opcode {
                            pc,
                            code: insn.code,
                        })
                    }
                };
                if regs[6] != Some(Val::Ctx) {
                    return Err(Fault::NoContext { pc });
                }
                // The kernel adds in 64 bits and passes an `int` offset.
                let off = match mode {
                    BPF_ABS => insn.imm,
                    BPF_IND => scalar(src)?.wrapping_add(imm) as i32,
                    _ => {
                        return Err(Fault::Opcode {
                            pc,
                            code: insn.code,
                        })
                    }
                };
                let off = usize::try_from(off).map_err(|_| Fault::NegativeOffset { pc })?;
                let Some(bytes) = packet.get(off..off + size) else {
                    return Ok(0);
                };
                let v = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                regs[0] = Some(Val::Scalar(v));
                for r in &mut regs[1..=5] {
                    *r = None;
                }
            }
            BPF_LDX | BPF_STX => {
                if insn.code & 0x18 != BPF_DW || insn.code & 0xe0 != BPF_MEM {
                    return Err(Fault::Opcode {
                        pc,
                        code: insn.code,
                    });
                }
                let base = if class == BPF_LDX { src } else { dst };
                if regs[base] != Some(Val::Frame)
                    || insn.off >= 0
                    || insn.off < -512
                    || insn.off % 8 != 0
                {
                    return Err(Fault::Stack { pc });
                }
                let slot = (512 + i32::from(insn.off)) as usize / 8;
                if class == BPF_LDX {
                    let v = stack[slot].ok_or(Fault::StackUninit { pc })?;
                    regs[dst] = Some(Val::Scalar(v));
                } else {
                    stack[slot] = Some(scalar(src)?);
                }
            }
            _ => {
                return Err(Fault::Opcode {
                    pc,
                    code: insn.code,
                })
            }
        }
        pc += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(f: impl FnOnce(&mut Asm)) -> Vec<Insn> {
        let mut a = Asm::new();
        f(&mut a);
        a.finish().unwrap()
    }

    #[test]
    fn loads_are_big_endian_and_end_the_program_past_the_packet() {
        let prog = assemble(|a| {
            a.alu_reg(BPF_MOV, R6, R1);
            a.ld_abs(BPF_W, 1);
            a.exit();
        });
        assert_eq!(run(&prog, &[9, 1, 2, 3, 4]), Ok(0x0102_0304));
        assert_eq!(run(&prog, &[9, 1, 2, 3]), Ok(0));
        let prog = assemble(|a| {
            a.alu_reg(BPF_MOV, R6, R1);
            a.alu_imm(BPF_MOV, R7, 2);
            a.ld_ind(BPF_H, R7, 1);
            a.exit();
        });
        assert_eq!(run(&prog, &[0, 0, 0, 0xab, 0xcd]), Ok(0xabcd));
        assert_eq!(run(&prog, &[0, 0, 0, 0xab]), Ok(0));
    }

    #[test]
    fn what_the_verifier_would_refuse_is_refused() {
        // Loads clobber R1-R5.
        let prog = assemble(|a| {
            a.alu_reg(BPF_MOV, R6, R1);
            a.alu_imm(BPF_MOV, R2, 1);
            a.ld_abs(BPF_B, 0);
            a.alu_reg(BPF_MOV, R0, R2);
            a.exit();
        });
        assert_eq!(run(&prog, &[0]), Err(Fault::Uninit { pc: 3, reg: 2 }));
        // No context in R6.
        let prog = assemble(|a| {
            a.ld_abs(BPF_B, 0);
            a.exit();
        });
        assert_eq!(run(&prog, &[0]), Err(Fault::NoContext { pc: 0 }));
        // Returning a pointer, or doing arithmetic on one.
        let prog = assemble(|a| {
            a.alu_reg(BPF_MOV, R0, R1);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::Pointer { pc: 1 }));
        let prog = assemble(|a| {
            a.alu_imm(BPF_ADD, R1, 4);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::Pointer { pc: 0 }));
        // Reading a stack slot never written.
        let prog = assemble(|a| {
            a.ldx_dw(R0, R10, -8);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::StackUninit { pc: 0 }));
        let prog = assemble(|a| {
            a.alu_imm(BPF_MOV, R2, 7);
            a.stx_dw(R10, -4, R2);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::Stack { pc: 1 }));
        // Shifts and modulo out of range, and the end of the program.
        let prog = assemble(|a| {
            a.alu_imm(BPF_MOV, R0, 1);
            a.alu_imm(BPF_LSH, R0, 64);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::Shift { pc: 1 }));
        let prog = assemble(|a| {
            a.alu_imm(BPF_MOV, R0, 1);
            a.alu_imm(BPF_MOD, R0, 0);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Err(Fault::DivZero { pc: 1 }));
        let prog = assemble(|a| a.alu_imm(BPF_MOV, R0, 1));
        assert_eq!(run(&prog, &[]), Err(Fault::FellOff));
    }

    #[test]
    fn stack_round_trip_and_wide_immediates() {
        let prog = assemble(|a| {
            a.ld_imm64(R2, 0x8000_0000_0000_0001);
            a.stx_dw(R10, -16, R2);
            a.ldx_dw(R0, R10, -16);
            a.alu_imm(BPF_RSH, R0, 63);
            a.alu_imm(BPF_XOR, R0, -1);
            a.exit();
        });
        assert_eq!(run(&prog, &[]), Ok(!1));
    }
}
