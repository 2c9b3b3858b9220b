// Calls into the Supervisor Binary Interface (OpenSBI on QEMU virt): `ecall` from S-mode with
// the extension id in a7 and the function id in a6 (SBI specification v2.0, chapter 3).
#pragma once

#include "dmakit/support/types.h"

namespace riscv::sbi {

// Extension ids.
constexpr uint64_t kExtBase = 0x10;
constexpr uint64_t kExtHsm = 0x48534D;       // "HSM"
constexpr uint64_t kExtSrst = 0x53525354;    // "SRST"
constexpr uint64_t kExtIpi = 0x735049;       // "sPI"
constexpr uint64_t kExtRfence = 0x52464E43;  // "RFNC"

// Function ids.
constexpr uint64_t kHsmHartStart = 0;
constexpr uint64_t kIpiSendIpi = 0;
constexpr uint64_t kRfenceRemoteSfenceVma = 1;

// HSM hart states (sbi_hart_get_status).
constexpr long kHartStarted = 0;
constexpr long kHartStopped = 1;

struct SbiRet {
  long error;  // 0 on success, negative SBI error code otherwise.
  long value;
};

// One SBI call. May be called with interrupts off; never sleeps.
SbiRet call(uint64_t ext, uint64_t fid, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0,
            uint64_t a3 = 0);

// SBI specification version as (major << 24) | minor, or 0 if the base extension fails.
uint64_t spec_version();

// Whether the firmware implements extension `ext`.
bool probe_extension(uint64_t ext);

// HSM state of `hartid` (kHartStarted, kHartStopped, ...), or a negative SBI error (e.g. the
// hart does not exist, or there is no HSM extension).
long hart_status(uint64_t hartid);

// SRST system reset: shutdown, with reason "no reason" (success) or "system failure".
// Returns only if the firmware has no SRST extension or refuses.
void system_shutdown(bool failure);

}  // namespace riscv::sbi
