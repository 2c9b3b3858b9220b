// The contract between the test kernel (kernel/, tests/qemu/, drivers/) and one architecture.
// Each arch/<arch>/ defines every function declared here; nothing outside arch/ knows which
// architecture it runs on.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

struct PerCpu;

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
  // CPUs the firmware describes (testkernel/percpu.h starts them).
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

// --- SMP (testkernel/percpu.h is the common half) ---

// The hardware ids (MPIDR affinity, hart id, APIC id) of the CPUs the firmware describes, the
// boot CPU's first (its id is cpu_data(0).hw_id), at most `max` of them. Returns how many were
// stored (at least 1: the boot CPU). Boot CPU, after kernel_main was entered.
unsigned cpu_hw_ids(const BootInfo& info, uint64_t* ids, unsigned max);

// Asks the firmware (PSCI CPU_ON, SBI HSM hart_start) or the local APIC (INIT-SIPI-SIPI) to start
// the CPU `cpu.hw_id`. The CPU then sets up its MMU (the boot CPU's tables), trap vectors and
// per-CPU pointer (&cpu), switches to cpu.stack_top and calls secondary_main(&cpu). Returns false
// when the start request itself is refused (the caller reports it); coming online is the
// caller's to wait for. Boot CPU, one CPU at a time.
bool start_cpu(PerCpu& cpu);

// Installs `cpu` as the calling CPU's per-CPU pointer (this_cpu()).
void set_this_cpu(PerCpu* cpu);

// Masks interrupts on the calling CPU and returns the previous state for irq_restore (DAIF,
// sstatus.SIE, RFLAGS.IF). Any context.
uintptr_t irq_save();
void irq_restore(uintptr_t state);

// The architecture's spin-wait hint (yield, pause), plus whatever this CPU owes CPUs that wait
// for it with interrupts masked (x86-64: a pending TLB shootdown). Any context.
void cpu_relax();

// Waits until work may have been posted to the calling secondary CPU: a low-power wait that
// wake_cpu ends (x86-64 hlt and an IPI, RISC-V wfi and an SBI IPI; AArch64 without an interrupt
// controller: PSCI CPU_OFF after a short spin, and CPU_ON again, which re-enters
// secondary_main). Called with interrupts masked, from secondary_main only.
void idle_wait();
// Wakes `cpu` from idle_wait after work was posted to it. Any context.
void wake_cpu(PerCpu& cpu);

// Invalidates the TLB entries for kernel virtual addresses [va, va + size) on every online CPU
// and returns once all have done it (the kernel hook of dmakit/kernel_hooks.h). Thread context,
// interrupts masked or not; must not be called holding a lock a work item or trap takes.
void tlb_flush_kernel_range(uintptr_t va, size_t size);

// For the test of remote TLB invalidation: a kernel virtual address that nothing else uses,
// mapped by a 4 KiB leaf, now translating to the RAM page `pa`. The first call creates the
// mapping; each later call rewrites the same leaf's output address and does no TLB maintenance
// at all, on any CPU (the caller invalidates, which is what the test is about).
// tlb_test_page_release puts back what the address mapped before (nothing, or its original
// page), again without TLB maintenance. Boot CPU, thread context.
// Errors: kNoMemory (no page-table memory for the first mapping), kNotSupported.
Result<uintptr_t> tlb_test_page_map(PhysAddr pa);
void tlb_test_page_release();

}  // namespace arch

// Entered by each architecture's boot code once the MMU, traps and console are up, on the boot
// CPU, with interrupts masked. Never returns.
extern "C" [[noreturn]] void kernel_main(const arch::BootInfo& info);
