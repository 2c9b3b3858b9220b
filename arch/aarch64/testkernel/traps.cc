// AArch64 exception handling: every exception is fatal in the test kernel. aarch64_trap (called
// from the vectors in entry.S with the saved registers) prints the cause and the registers in a
// readable panic and stops QEMU with a failure status.
#include "dmakit/support/types.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"
#include "testkernel/panic.h"

namespace {

// Matches the frame entry.S builds.
struct TrapFrame {
  uint64_t x[31];
  uint64_t sp;
  uint64_t elr;
  uint64_t spsr;
  uint64_t esr;
  uint64_t far;
};
static_assert(sizeof(TrapFrame) == 36 * 8, "TrapFrame must match entry.S");

const char* vector_name(uint64_t kind) {
  static const char* const kTypes[] = {"synchronous", "IRQ", "FIQ", "SError"};
  static const char* const kFrom[] = {"current EL with SP_EL0", "current EL with SP_ELx",
                                      "lower EL (AArch64)", "lower EL (AArch32)"};
  static char buf[64];
  ksnprintf(buf, sizeof(buf), "%s from %s", kTypes[kind & 3], kFrom[(kind >> 2) & 3]);
  return buf;
}

const char* ec_name(uint64_t ec) {
  switch (ec) {
    case 0x00:
      return "unknown reason (undefined instruction?)";
    case 0x01:
      return "WFI/WFE trapped";
    case 0x07:
      return "FP/SIMD access trapped";
    case 0x0e:
      return "illegal execution state";
    case 0x15:
      return "SVC";
    case 0x16:
      return "HVC";
    case 0x17:
      return "SMC";
    case 0x18:
      return "system register access trapped";
    case 0x20:
      return "instruction abort from a lower EL";
    case 0x21:
      return "instruction abort";
    case 0x22:
      return "PC alignment fault";
    case 0x24:
      return "data abort from a lower EL";
    case 0x25:
      return "data abort";
    case 0x26:
      return "SP alignment fault";
    case 0x2f:
      return "SError";
    case 0x3c:
      return "BRK instruction";
    default:
      return "other";
  }
}

const char* fault_status_name(uint64_t fsc) {
  switch (fsc & 0x3c) {
    case 0x04:
      return "translation fault";
    case 0x08:
      return "access flag fault";
    case 0x0c:
      return "permission fault";
    case 0x00:
      return "address size fault";
    default:
      break;
  }
  if (fsc == 0x21) return "alignment fault";
  if (fsc == 0x10) return "synchronous external abort";
  return "other fault";
}

}  // namespace

extern "C" [[noreturn]] void aarch64_trap(uint64_t kind, const TrapFrame* f) {
  if (!kpanic_begin()) arch::exit_qemu(false);
  uint64_t ec = (f->esr >> 26) & 0x3f;
  uint64_t iss = f->esr & 0x1ffffff;
  kprintf("\nPANIC: unexpected exception: %s: %s (EC 0x%llx)\n", vector_name(kind), ec_name(ec),
          static_cast<unsigned long long>(ec));
  if (ec == 0x24 || ec == 0x25 || ec == 0x20 || ec == 0x21) {
    uint64_t fsc = iss & 0x3f;
    kprintf("  %s, level %llu, %s access at FAR 0x%016llx\n", fault_status_name(fsc),
            static_cast<unsigned long long>(fsc & 3),
            (ec == 0x24 || ec == 0x25) ? ((iss >> 6) & 1 ? "write" : "read") : "instruction",
            static_cast<unsigned long long>(f->far));
  }
  kprintf("  ESR 0x%016llx  FAR 0x%016llx\n  ELR 0x%016llx  SPSR 0x%016llx  SP 0x%016llx\n",
          static_cast<unsigned long long>(f->esr), static_cast<unsigned long long>(f->far),
          static_cast<unsigned long long>(f->elr), static_cast<unsigned long long>(f->spsr),
          static_cast<unsigned long long>(f->sp));
  for (int i = 0; i < 31; i += 4) {
    kprintf(" ");
    for (int j = i; j < i + 4 && j < 31; ++j) {
      kprintf(" x%-2d 0x%016llx", j, static_cast<unsigned long long>(f->x[j]));
    }
    kprintf("\n");
  }
  kpanic_finish();
}
