// The contract between the test kernel (kernel/, tests/qemu/, drivers/) and one architecture.
// Each arch/<arch>/ defines every function declared here; nothing outside arch/ knows which
// architecture it runs on.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/types.h"

namespace arch {

constexpr size_t kMaxMemRanges = 16;
constexpr size_t kMaxReserved = 32;

// What the boot code learned from the firmware (device tree or PVH start info).
struct BootInfo {
  PhysRange ram[kMaxMemRanges];
  size_t num_ram = 0;
  // Firmware-reserved memory, the kernel image, the device tree, early page tables: never given
  // to the page-frame allocator.
  PhysRange reserved[kMaxReserved];
  size_t num_reserved = 0;
  // Virtual address of the device tree blob (aarch64, riscv64), null on x86_64.
  const void* fdt = nullptr;
  // Kernel command line ("" if none): "mode=test" or "mode=demo" from the runner.
  const char* cmdline = "";
  // CPU virtual address of physical p is p + direct_map_offset (non-zero), for all RAM.
  uintptr_t direct_map_offset = 0;
  // CPUs the firmware describes (secondaries stay parked).
  unsigned num_cpus = 1;
};

// Console output (polled UART). Safe in panic and trap context.
void console_putc(char c);

// Leaves QEMU with a status the runner reads: success or failure.
[[noreturn]] void exit_qemu(bool success);

// Monotonic time in nanoseconds since boot (for driver timeouts and test bounds).
uint64_t now_ns();

// Builds the architecture's DmaOp (a KernelDmaOp subclass with the real cache instructions) in
// static storage and returns it. Called once, after the allocator and pools exist.
KernelDmaOp& create_dma_op(const KernelDmaOp::Config& cfg);

// Cache line (or Zicbom block) size used by the DmaOp, in bytes.
size_t cache_line_size();

// One line describing the cache-maintenance features found (e.g. "zicbom block 64", "clflushopt
// clwb line 64", "dc civac line 64"), for the boot report.
const char* cache_features();

// For tests: the page-table attribute of a direct-map virtual address, as a short string
// ("normal-wb", "nc", "uc-", ...), or null if unmapped.
const char* mapping_attribute(const void* va);

// For tests and reports: page-table pages currently spent on splitting large direct-map leaves so
// that some pages can be mapped uncached (KernelDmaOp::set_memory_attribute; 0 once every such
// page is cacheable again, when the large leaves are put back).
size_t direct_map_split_tables();

}  // namespace arch

// Entered by each architecture's boot code once the MMU, traps and console are up, on the boot
// CPU, with interrupts masked. Never returns.
extern "C" [[noreturn]] void kernel_main(const arch::BootInfo& info);
