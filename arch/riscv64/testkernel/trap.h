// The S-mode trap handler of the RISC-V test kernel. Interrupts go to irq.h's irq_dispatch; every
// exception is fatal, except a fault raised on purpose by a probe (probe_instruction_traps below),
// which is skipped over.
#pragma once

#include "dmakit/support/types.h"

namespace riscv {

// What boot.S saves on the trap stack; x[2] is the interrupted sp, x[0] is zero.
struct TrapFrame {
  uint64_t x[32];
  uint64_t sepc;
  uint64_t sstatus;
  uint64_t scause;
  uint64_t stval;
};
static_assert(sizeof(TrapFrame) == 288, "boot.S saves a 288-byte frame");

// Name of a trap cause ("load page fault", "supervisor timer interrupt", ...).
const char* trap_cause_name(uint64_t scause);

// Which cache-block operation to probe.
enum class CboProbe : uint8_t { kClean, kFlush, kInval };

// Executes the Zicbom instruction on the block holding `addr` and reports whether it raised an
// illegal-instruction trap (the firmware left menvcfg.CBCFE / CBIE off for S-mode). The trap is
// caught and skipped. Precondition: the trap vector is installed; `addr` is mapped RAM whose
// contents may be written back (for kInval: whose cached contents may be discarded).
bool cbo_traps(CboProbe op, void* addr);

}  // namespace riscv

// Called by the trap vector in boot.S.
extern "C" void riscv64_trap(riscv::TrapFrame* frame);
