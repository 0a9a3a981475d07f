//! (b) The kernel's own run: the verifier accepts the program for every
//! split, and `BPF_PROG_TEST_RUN` answers what [`packet_owner`] answers.

use super::gen::Gen;
use super::{configs, is_root, program, skip};
use super::{packet_owner, Shards, SteeringProgram};

/// Load the program, or say why this test cannot.
pub(super) fn load_or_skip(test: &str, shards: &Shards) -> Option<SteeringProgram> {
    if !is_root() {
        skip(test, "needs root (bpf(2) BPF_PROG_LOAD)");
        return None;
    }
    match SteeringProgram::load(shards) {
        Ok(p) => Some(p),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
            skip(test, &format!("the kernel does not let us load eBPF: {e}"));
            None
        }
        Err(e) => panic!("the kernel refused the steering program: {e}"),
    }
}

/// The same packets as the interpreter test, run by the kernel itself with
/// `BPF_PROG_TEST_RUN`: the verifier accepts the program for every split,
/// and the kernel's answers equal [`packet_owner`].
#[test]
fn program_equals_the_rust_function_in_the_kernel() {
    const TEST: &str =
        "device::steering::tests::kernel::program_equals_the_rust_function_in_the_kernel";
    for (i, shards) in configs().into_iter().enumerate() {
        let Some(prog) = load_or_skip(TEST, &shards) else {
            return;
        };
        assert_eq!(prog.shards(), &shards);
        assert_eq!(prog.instructions(), program(&shards).len());
        let mut gen = Gen::new(i as u64, shards.ephemeral());
        let mut runs = 0;
        for _ in 0..3000 {
            let (kind, p) = gen.packet();
            // The test skb must fit one page; long IPv6 chains may not.
            if p.len() > TEST_RUN_MAX {
                continue;
            }
            let got = match prog.test_run(&p) {
                Ok(v) => v,
                Err(e) if runs == 0 && e.raw_os_error() == Some(ENOTSUPP) => {
                    skip(TEST, &format!("BPF_PROG_TEST_RUN refused: {e}"));
                    return;
                }
                Err(e) => panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", p.len()),
            };
            runs += 1;
            let want = packet_owner(&shards, &p);
            assert_eq!(got, u32::from(want), "{shards:?}: {kind:?} {p:02x?}");
        }
        assert!(runs > 2900, "{shards:?}: only {runs} packets small enough");
    }
}

/// Largest packet `BPF_PROG_TEST_RUN` takes for a socket filter with 4 KiB
/// pages (a page less headroom and `skb_shared_info`), with room to spare.
const TEST_RUN_MAX: usize = 3000;

/// `ENOTSUPP` (524), the kernel-internal errno a program type without a
/// test runner gives; libc does not export it.
const ENOTSUPP: i32 = 524;
