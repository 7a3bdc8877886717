//! Steering downstream packets to their session's thread by destination address.
//!
//! Each data-plane thread reads its own queue of the multi-queue TUN device ([`crate::workers`]).
//! Which queue the kernel puts a packet on is the TUN driver's choice. Left to itself it keeps a
//! table of flows (a hash of addresses and ports) and the queue each was last written from, which
//! has two gaps: a flow's first reply is queued before the flow is recorded, and the table holds
//! at most 4,096 flows, far fewer than a gateway with tens of thousands of devices carries, so
//! most replies land on any queue and cross threads.
//!
//! A gateway knows better: a downstream packet's destination is a pool address, and the pool hands
//! out addresses by thread ([`crate::pool::Pool::set_stripes`]: slot `i` belongs to thread
//! `i % threads`). So tunneld gives the driver a steering program (`TUNSETSTEERINGEBPF`), a
//! sixteen-instruction eBPF socket filter built here with the pool's numbers as constants. It
//! reads the destination (the low 32 bits for IPv6), turns it into the slot `i`, and returns the
//! queue of thread `i % threads` (queue `1 + t`: queue 0 is the main runtime's, see
//! [`crate::dataplane::Tun::attach_queue`]). Anything else goes to queue 0, and the driver no
//! longer hashes every packet.
//!
//! A session keeps its address when it reconnects with its cookie, but the kernel hands the new
//! TCP connection to whichever thread's listener its hash picks: with two threads, about every
//! other reconnect lands on the thread that does not own the address's stripe. So the program
//! first looks the slot up in an array map ([`Steering::steer`]): zero means "the stripe's
//! thread", anything else is the queue to use. A connection sets its slot's entry when it installs
//! its route on a thread other than the stripe's (and clears it when it is back), one `bpf` call
//! per such reconnect; packets never wait for it, since a packet that reaches the wrong queue is
//! handed to its session's thread as before. The map is created before the data-plane threads
//! start, so that threads with private file tables hold its descriptor too. If it cannot be
//! created, the program is built without it (replies of moved sessions then cross threads).
//!
//! Loading a program needs `CAP_BPF` or `CAP_SYS_ADMIN` on most kernels (Debian sets
//! `kernel.unprivileged_bpf_disabled`); it happens at start, before privileges are dropped. A
//! container without that capability, or a kernel without eBPF, keeps the driver's own flow
//! steering: the daemon logs it, and `tunneld_downstream_handoffs_total` shows the cost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use crate::pool::Pool;

/// `SKF_NET_OFF`: a packet load offset relative to the network header.
const NET_OFF: i32 = -0x10_0000;
/// `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `src_reg` of a `BPF_LD | BPF_IMM | BPF_DW` that loads a map by descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// The `bpf_map_lookup_elem` helper.
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// One eBPF instruction, as the kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
/// `BPF_LD | BPF_ABS | BPF_B`.
const LD_ABS_B: u8 = 0x30;
/// `BPF_LD | BPF_ABS | BPF_W`.
const LD_ABS_W: u8 = 0x20;
const ALU32_K: u8 = 0x04;
const ALU64_K: u8 = 0x07;
const ALU64_X: u8 = 0x07 | 0x08;
const JMP_K: u8 = 0x05;
/// `BPF_LD | BPF_IMM | BPF_DW`: a 64-bit immediate over two instructions.
const LD_IMM64: u8 = 0x18;
/// `BPF_STX | BPF_MEM | BPF_W`.
const STX_MEM_W: u8 = 0x63;
/// `BPF_LDX | BPF_MEM | BPF_W`.
const LDX_MEM_W: u8 = 0x61;
/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
const MOV: u8 = 0xb0;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const RSH: u8 = 0x70;
const MOD: u8 = 0x90;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const EXIT: u8 = 0x05 | 0x90;

/// The numbers the program is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Slot 0's IPv4 address, as a number.
    pub v4_base: u32,
    /// The low 32 bits of slot 0's IPv6 address (any value without an IPv6 pool).
    pub v6_base: u32,
    /// Slots in the pool.
    pub size: u32,
    /// Data-plane threads (at least one).
    pub threads: u32,
}

impl Plan {
    /// The plan for `pool` split over `threads` threads.
    pub fn new(pool: &Pool, threads: usize) -> Self {
        Self {
            v4_base: u32::from(pool.ipv4_of(0)),
            v6_base: pool
                .ipv6_of(0)
                .map_or(0, |a| (u128::from(a) & 0xffff_ffff) as u32),
            size: pool.size(),
            threads: u32::try_from(threads.max(1)).unwrap_or(u32::MAX),
        }
    }

    /// The queue the program picks for a packet to slot `index` (a reference for tests).
    #[must_use]
    pub fn queue_of(&self, index: u32) -> u32 {
        if index < self.size {
            1 + index % self.threads.max(1)
        } else {
            0
        }
    }
}

/// The steering program for `plan`, looking each slot up in the array map `map` first when given.
fn program(plan: &Plan, map: Option<RawFd>) -> Vec<Insn> {
    // Constants go in 32-bit immediates; the arithmetic is 32-bit, so the casts wrap as meant.
    let v4 = plan.v4_base as i32;
    let v6 = plan.v6_base as i32;
    let size = i32::try_from(plan.size).unwrap_or(i32::MAX);
    let threads = i32::try_from(plan.threads.max(1)).unwrap_or(i32::MAX);
    let mut p = vec![
        // 0: r6 = ctx (the packet loads below read it from r6).
        insn(ALU64_X | MOV, 6, 1, 0, 0),
        // 1: r0 = IP version nibble.
        insn(LD_ABS_B, 0, 0, 0, NET_OFF),
        insn(ALU32_K | RSH, 0, 0, 0, 4),
        // 3: IPv6 -> 8; not IPv4 -> queue 0 (patched below).
        insn(JMP_K | JEQ, 0, 0, 4, 6),
        insn(JMP_K | JNE, 0, 0, 0, 4),
        // 5: IPv4: slot = destination - slot 0's address.
        insn(LD_ABS_W, 0, 0, 0, NET_OFF + 16),
        insn(ALU32_K | SUB, 0, 0, 0, v4),
        insn(JMP_K | JA, 0, 0, 2, 0),
        // 8: IPv6: the same on the low 32 bits of the destination.
        insn(LD_ABS_W, 0, 0, 0, NET_OFF + 36),
        insn(ALU32_K | SUB, 0, 0, 0, v6),
        // 10: outside the pool -> queue 0 (patched below).
        insn(JMP_K | JGE, 0, 0, 0, size),
        // 11: r7 = slot (r7 survives the helper call).
        insn(ALU64_X | MOV, 7, 0, 0, 0),
    ];
    if let Some(fd) = map {
        p.extend([
            // 12: key = slot, on the stack; r0 = &map[slot] or null.
            insn(STX_MEM_W, 10, 0, -4, 0),
            insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, fd),
            insn(0, 0, 0, 0, 0),
            insn(ALU64_X | MOV, 2, 10, 0, 0),
            insn(ALU64_K | ADD, 2, 0, 0, -4),
            insn(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM),
            // 18: no entry -> the stripe's queue; a non-zero entry is the queue.
            insn(JMP_K | JEQ, 0, 0, 2, 0),
            insn(LDX_MEM_W, 0, 0, 0, 0),
            insn(JMP_K | JNE, 0, 0, 3, 0),
        ]);
    }
    p.extend([
        // The stripe's queue: 1 + slot % threads.
        insn(ALU64_X | MOV, 0, 7, 0, 0),
        insn(ALU32_K | MOD, 0, 0, 0, threads),
        insn(ALU32_K | ADD, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    // Queue 0, the target of the jumps at 4 and 10.
    let q0 = p.len();
    p.extend([insn(ALU32_K | MOV, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    for at in [4, 10] {
        if let Some(i) = p.get_mut(at) {
            i.off = i16::try_from(q0 - at - 1).unwrap_or(i16::MAX);
        }
    }
    p
}

/// `union bpf_attr` for `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The per-slot queue overrides the program reads: an array map of `u32`, one per pool slot, all
/// zero ("the stripe's thread") at first.
#[derive(Debug)]
pub struct SlotMap {
    fd: OwnedFd,
    /// What each entry holds now, so that only changes reach the kernel.
    entries: Box<[AtomicU16]>,
}

impl SlotMap {
    /// Creates the map for `plan`'s pool. Call it before the data-plane threads take private file
    /// tables, so that they hold the descriptor too.
    pub fn create(plan: &Plan) -> io::Result<Self> {
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: plan.size.max(1),
            map_flags: 0,
        };
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        #[allow(unsafe_code)]
        // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let entries = (0..plan.size.max(1)).map(|_| AtomicU16::new(0)).collect();
        Ok(Self { fd, entries })
    }

    fn set(&self, index: u32, queue: u32) -> io::Result<()> {
        let key = index;
        let mut attr = MapUpdateAttr {
            map_fd: u32::try_from(self.fd.as_raw_fd()).map_err(io::Error::other)?,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&queue) as u64,
            ..MapUpdateAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// Steering as it runs: the loaded program and, when it could be created, its slot map.
#[derive(Debug)]
pub struct Steering {
    plan: Plan,
    program: Program,
    slots: Option<SlotMap>,
    /// Set when an update failed: kernels before 6.5 refuse every `bpf()` call without CAP_BPF,
    /// which the threads no longer have once privileges are dropped.
    given_up: AtomicBool,
}

impl Steering {
    /// Loads the program for `plan`, reading `slots` when given.
    pub fn load(plan: Plan, slots: Option<SlotMap>) -> io::Result<Self> {
        let program =
            Program::load_insns(&program(&plan, slots.as_ref().map(|m| m.fd.as_raw_fd())))?;
        Ok(Self {
            plan,
            program,
            slots,
            given_up: AtomicBool::new(false),
        })
    }

    /// The loaded program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// True when moved sessions can be followed (the slot map exists).
    pub fn follows_moves(&self) -> bool {
        self.slots.is_some()
    }

    /// Sends the packets for slot `index` to the queue of data-plane thread `thread` from now on.
    /// Returns true when that changed the slot's entry (the session moved, or moved back). An
    /// error leaves the entry as it was (its packets keep reaching the stripe's thread, which
    /// hands them over) and ends steering by the map: only the first error is returned.
    pub fn steer(&self, index: u32, thread: u16) -> io::Result<bool> {
        let Some(slots) = self
            .slots
            .as_ref()
            .filter(|_| !self.given_up.load(Ordering::Relaxed))
        else {
            return Ok(false);
        };
        let Some(entry) = slots.entries.get(index as usize) else {
            return Ok(false);
        };
        if thread == crate::dataplane::NO_THREAD {
            return Ok(false);
        }
        let queue = 1 + u32::from(thread);
        let value = if queue == self.plan.queue_of(index) {
            0
        } else {
            queue
        };
        let value16 = u16::try_from(value).unwrap_or(u16::MAX);
        if entry.load(Ordering::Relaxed) == value16 {
            return Ok(false);
        }
        if let Err(e) = slots.set(index, value) {
            return if self.given_up.swap(true, Ordering::Relaxed) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        entry.store(value16, Ordering::Relaxed);
        Ok(true)
    }
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used (the kernel accepts a prefix).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

#[allow(unsafe_code)]
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`, and
    // its size is passed with it; every pointer inside it points to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A loaded steering program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Builds the program for `plan` and loads it into the kernel. The error carries the
    /// verifier's log when the kernel refused the program itself.
    pub fn load(plan: &Plan) -> io::Result<Self> {
        Self::load_insns(&program(plan, None))
    }

    fn load_insns(insns: &[Insn]) -> io::Result<Self> {
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        for (d, s) in attr.prog_name.iter_mut().zip(b"tunneld") {
            *d = *s;
        }
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            if text.is_empty() {
                e
            } else {
                io::Error::new(e.kind(), format!("{e}; verifier: {text}"))
            }
        })?;
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        #[allow(unsafe_code)]
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Runs the program on `packet` (an IP packet) in the kernel, as `BPF_PROG_TEST_RUN` does, and
    /// returns the queue it picks. For tests and diagnostics.
    pub fn test_run(&self, packet: &[u8]) -> io::Result<u32> {
        // The test run takes an Ethernet frame and points the network header after it.
        let ethertype: u16 = if packet.first().is_some_and(|b| b >> 4 == 6) {
            0x86dd
        } else {
            0x0800
        };
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(packet);
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(self.fd.as_raw_fd()).map_err(io::Error::other)?,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }

    /// Makes this the steering program of the TUN device that `tun` (any queue) belongs to.
    pub fn attach(&self, tun: &impl AsRawFd) -> io::Result<()> {
        let fd: libc::c_int = self.fd.as_raw_fd();
        #[allow(unsafe_code)]
        // SAFETY: TUNSETSTEERINGEBPF reads one int (a program descriptor) from the pointer, which
        // is valid for the call; on another kind of descriptor the ioctl fails with an error.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETSTEERINGEBPF, &raw const fd) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(v6: bool, threads: usize) -> (std::sync::Arc<Pool>, Plan) {
        let pool = Pool::new(
            "10.9.0.0/16".parse().unwrap(),
            v6.then(|| "fd00:9::/64".parse().unwrap()),
        );
        let plan = Plan::new(&pool, threads);
        (pool, plan)
    }

    fn v4_packet(dst: std::net::Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 51, 100, 7]);
        p[16..20].copy_from_slice(&dst.octets());
        p
    }

    fn v6_packet(dst: std::net::Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn plan_follows_the_pool() {
        let (pool, plan) = plan(true, 3);
        assert_eq!(plan.v4_base, u32::from(pool.ipv4_of(0)));
        assert_eq!(plan.size, pool.size());
        assert_eq!(plan.queue_of(0), 1);
        assert_eq!(plan.queue_of(4), 2);
        assert_eq!(plan.queue_of(pool.size()), 0);
        assert_eq!(Plan::new(&pool, 0).threads, 1);
    }

    /// The kernel's verifier accepts the program and, run in the kernel on real packets, it picks
    /// the queue of the thread whose stripe holds the destination (needs root, as CI has).
    #[test]
    fn kernel_runs_the_program_and_picks_each_slots_thread_queue() {
        for threads in [1, 2, 3, 7] {
            let (pool, plan) = plan(true, threads);
            let prog = Program::load(&plan).expect("load the steering program (needs CAP_BPF)");
            for index in [0, 1, 2, 5, 6, 100, 4095, pool.size() - 1] {
                let want = plan.queue_of(index);
                let got = prog.test_run(&v4_packet(pool.ipv4_of(index))).unwrap();
                assert_eq!(got, want, "IPv4 slot {index}, {threads} threads");
                let got = prog
                    .test_run(&v6_packet(pool.ipv6_of(index).unwrap()))
                    .unwrap();
                assert_eq!(got, want, "IPv6 slot {index}, {threads} threads");
            }
            // Not a client address: the gateway's own, the broadcast, another network, and
            // something that is not IP at all.
            for other in ["10.9.0.1", "10.9.255.255", "192.0.2.1", "10.10.0.2"] {
                let got = prog.test_run(&v4_packet(other.parse().unwrap())).unwrap();
                assert_eq!(got, 0, "{other}");
            }
            assert_eq!(prog.test_run(&[0x10; 40]).unwrap(), 0);
        }
    }

    /// A failed map update (here: a descriptor that is not a map; on kernels before 6.5, a thread
    /// without CAP_BPF) is reported once, and steering by the map stops there.
    #[test]
    fn a_failed_update_is_reported_once_then_steering_by_map_stops() {
        let (_, plan) = plan(false, 2);
        let slots = SlotMap::create(&plan).expect("create the slot map (needs CAP_BPF)");
        let mut st = Steering::load(plan, Some(slots)).expect("load the program");
        if let Some(slots) = st.slots.as_mut() {
            slots.fd = std::fs::File::open("/dev/null").unwrap().into();
        }
        assert!(st.steer(1, 0).is_err());
        assert!(!st.steer(1, 0).unwrap());
        assert!(!st.steer(3, 0).unwrap());
    }

    /// With the slot map, a slot steered to another thread's queue gets its packets there (IPv4
    /// and IPv6), every other slot keeps its stripe's queue, and steering it back to the stripe's
    /// thread clears the entry. Only changes count.
    #[test]
    fn a_steered_slot_follows_its_session_to_another_thread() {
        for threads in [2, 3] {
            let (pool, plan) = plan(true, threads);
            let slots = SlotMap::create(&plan).expect("create the slot map (needs CAP_BPF)");
            let st = Steering::load(plan, Some(slots)).expect("load the program with its map");
            assert!(st.follows_moves());
            let run = |index: u32| {
                let v4 = st
                    .program()
                    .test_run(&v4_packet(pool.ipv4_of(index)))
                    .unwrap();
                let v6 = st
                    .program()
                    .test_run(&v6_packet(pool.ipv6_of(index).unwrap()))
                    .unwrap();
                assert_eq!(v4, v6, "slot {index}");
                v4
            };
            for index in [0, 1, 2, 7, pool.size() - 1] {
                assert_eq!(run(index), plan.queue_of(index), "slot {index}");
            }
            // Slot 5's stripe is thread 5 % threads (not 0); its session reconnects on thread 0.
            let home = plan.queue_of(5);
            assert_ne!(home, 1);
            assert!(st.steer(5, 0).unwrap());
            assert!(!st.steer(5, 0).unwrap(), "no change, no update");
            assert_eq!(run(5), 1);
            assert_eq!(run(4), plan.queue_of(4));
            assert_eq!(run(6), plan.queue_of(6));
            // Back on its own thread.
            assert!(st.steer(5, u16::try_from(home - 1).unwrap()).unwrap());
            assert_eq!(run(5), home);
            // A slot outside the pool is not steered, and the program still says queue 0 there.
            assert!(!st.steer(pool.size(), 0).unwrap());
            assert_eq!(
                st.program()
                    .test_run(&v4_packet("10.9.255.255".parse().unwrap()))
                    .unwrap(),
                0
            );
        }
    }
}
