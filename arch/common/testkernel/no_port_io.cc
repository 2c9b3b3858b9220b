// The port-I/O and PCI-fallback half of testkernel/arch_io.h for architectures that have neither
// (aarch64, riscv64): there is no I/O port space, and PCI is always found through the device tree.
// Shared so that each such architecture does not repeat the same refusals.
#include "testkernel/arch_io.h"

namespace arch {

Result<uint32_t> port_in(uint16_t, unsigned) {
  return ErrorCode::kNotSupported;
}

Result<void> port_out(uint16_t, uint32_t, unsigned) {
  return ErrorCode::kNotSupported;
}

Result<PciHostDesc> pci_host_fallback() {
  return ErrorCode::kNotSupported;
}

}  // namespace arch
