// SBI calls: see sbi.h.
#include "arch/riscv64/testkernel/sbi.h"

namespace riscv::sbi {

SbiRet call(uint64_t ext, uint64_t fid, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3) {
  register uint64_t r_a0 __asm__("a0") = a0;
  register uint64_t r_a1 __asm__("a1") = a1;
  register uint64_t r_a2 __asm__("a2") = a2;
  register uint64_t r_a3 __asm__("a3") = a3;
  register uint64_t r_a6 __asm__("a6") = fid;
  register uint64_t r_a7 __asm__("a7") = ext;
  __asm__ volatile("ecall"
                   : "+r"(r_a0), "+r"(r_a1)
                   : "r"(r_a2), "r"(r_a3), "r"(r_a6), "r"(r_a7)
                   : "memory");
  return SbiRet{static_cast<long>(r_a0), static_cast<long>(r_a1)};
}

uint64_t spec_version() {
  SbiRet r = call(kExtBase, 0);
  return r.error == 0 ? static_cast<uint64_t>(r.value) : 0;
}

bool probe_extension(uint64_t ext) {
  SbiRet r = call(kExtBase, 3, ext);
  return r.error == 0 && r.value != 0;
}

long hart_status(uint64_t hartid) {
  SbiRet r = call(kExtHsm, 2, hartid);
  return r.error != 0 ? r.error : r.value;
}

void system_shutdown(bool failure) {
  if (!probe_extension(kExtSrst)) return;
  // Reset type 0: shutdown. Reason 0: no reason; 1: system failure.
  (void)call(kExtSrst, 0, 0, failure ? 1 : 0);
}

}  // namespace riscv::sbi
