// The S-mode trap handler: prints scause, stval, sepc, sstatus and all registers, then fails the
// run through the kernel's panic path; see trap.h.
#include "arch/riscv64/testkernel/trap.h"

#include "arch/riscv64/testkernel/csr.h"
#include "arch/riscv64/testkernel/irq.h"
#include "testkernel/kprintf.h"
#include "testkernel/panic.h"

extern "C" char boot_stack_guard[];  // NOLINT: boot.S symbol, one unmapped page.

namespace riscv {

namespace {

constexpr uint64_t kCauseIllegalInstruction = 2;

// Address of the instruction a probe expects to trap, 0 when no probe is running. Written before
// the instruction executes (same hart), read by the handler.
volatile uint64_t g_probe_pc = 0;
volatile bool g_probe_trapped = false;

const char* const kRegNames[32] = {"zero", "ra", "sp",  "gp",  "tp", "t0", "t1", "t2",
                                   "s0",   "s1", "a0",  "a1",  "a2", "a3", "a4", "a5",
                                   "a6",   "a7", "s2",  "s3",  "s4", "s5", "s6", "s7",
                                   "s8",   "s9", "s10", "s11", "t3", "t4", "t5", "t6"};

}  // namespace

const char* trap_cause_name(uint64_t scause) {
  uint64_t code = scause & ~kScauseInterrupt;
  if ((scause & kScauseInterrupt) != 0) {
    switch (code) {
      case 1:
        return "supervisor software interrupt";
      case 5:
        return "supervisor timer interrupt";
      case 9:
        return "supervisor external interrupt";
      case 13:
        return "counter overflow interrupt";
      default:
        return "unknown interrupt";
    }
  }
  switch (code) {
    case 0:
      return "instruction address misaligned";
    case 1:
      return "instruction access fault";
    case 2:
      return "illegal instruction";
    case 3:
      return "breakpoint";
    case 4:
      return "load address misaligned";
    case 5:
      return "load access fault";
    case 6:
      return "store/AMO address misaligned";
    case 7:
      return "store/AMO access fault";
    case 8:
      return "environment call from U-mode";
    case 9:
      return "environment call from S-mode";
    case 12:
      return "instruction page fault";
    case 13:
      return "load page fault";
    case 15:
      return "store/AMO page fault";
    case 18:
      return "software check";
    case 19:
      return "hardware error";
    default:
      return "unknown exception";
  }
}

bool cbo_traps(CboProbe op, void* addr) {
  g_probe_trapped = false;
  uint64_t pc_slot;
  // The label sits on the cache-block instruction itself, so the handler can match sepc to it.
  switch (op) {
    case CboProbe::kClean:
      __asm__ volatile("lla %0, 1f\n\tsd %0, 0(%1)\n1:\n\tcbo.clean (%2)"
                       : "=&r"(pc_slot)
                       : "r"(&g_probe_pc), "r"(addr)
                       : "memory");
      break;
    case CboProbe::kFlush:
      __asm__ volatile("lla %0, 1f\n\tsd %0, 0(%1)\n1:\n\tcbo.flush (%2)"
                       : "=&r"(pc_slot)
                       : "r"(&g_probe_pc), "r"(addr)
                       : "memory");
      break;
    case CboProbe::kInval:
      __asm__ volatile("lla %0, 1f\n\tsd %0, 0(%1)\n1:\n\tcbo.inval (%2)"
                       : "=&r"(pc_slot)
                       : "r"(&g_probe_pc), "r"(addr)
                       : "memory");
      break;
  }
  g_probe_pc = 0;
  return g_probe_trapped;
}

}  // namespace riscv

extern "C" void riscv64_trap(riscv::TrapFrame* f) {
  // Interrupts (timer, IMSIC) are dispatched; only exceptions are fatal.
  if ((f->scause & riscv::kScauseInterrupt) != 0) {
    riscv::irq_dispatch(f->scause);
    return;
  }
  using riscv::g_probe_pc;
  uint64_t probe_pc = g_probe_pc;
  if (probe_pc != 0 && f->sepc == probe_pc && f->scause == riscv::kCauseIllegalInstruction) {
    riscv::g_probe_trapped = true;
    g_probe_pc = 0;
    f->sepc += 4;  // cbo.* are 4-byte instructions (no compressed forms).
    return;
  }
  if (!kpanic_begin()) kpanic_finish();
  kprintf("\nPANIC: unexpected trap: %s\n", riscv::trap_cause_name(f->scause));
  kprintf("  scause  0x%016llx  stval   0x%016llx\n", static_cast<unsigned long long>(f->scause),
          static_cast<unsigned long long>(f->stval));
  auto guard = reinterpret_cast<uintptr_t>(boot_stack_guard);
  if ((f->scause & riscv::kScauseInterrupt) == 0 && f->stval >= guard && f->stval - guard < 4096) {
    kprintf("  (stval is in the boot stack's guard page: kernel stack overflow)\n");
  }
  kprintf("  sepc    0x%016llx  sstatus 0x%016llx (%s, SIE %d, SPIE %d)\n",
          static_cast<unsigned long long>(f->sepc), static_cast<unsigned long long>(f->sstatus),
          (f->sstatus & riscv::kSstatusSpp) != 0 ? "from S-mode" : "from U-mode",
          static_cast<int>((f->sstatus >> 1) & 1), static_cast<int>((f->sstatus >> 5) & 1));
  kprintf("  satp    0x%016llx  stvec   0x%016llx\n",
          static_cast<unsigned long long>(riscv::read_satp()),
          static_cast<unsigned long long>(riscv::read_stvec()));
  for (unsigned i = 0; i < 32; i += 4) {
    kprintf("  %-4s %016llx  %-4s %016llx  %-4s %016llx  %-4s %016llx\n", riscv::kRegNames[i],
            static_cast<unsigned long long>(f->x[i]), riscv::kRegNames[i + 1],
            static_cast<unsigned long long>(f->x[i + 1]), riscv::kRegNames[i + 2],
            static_cast<unsigned long long>(f->x[i + 2]), riscv::kRegNames[i + 3],
            static_cast<unsigned long long>(f->x[i + 3]));
  }
  kpanic_finish();
}
