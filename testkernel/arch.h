// The contract between the test kernel (kernel/, tests/qemu/, drivers/) and one architecture.
// Each arch/<arch>/ defines every function declared here; nothing outside arch/ knows which
// architecture it runs on.
#pragma once

#include "dmakit/kernel_dma_op.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/span.h"
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
// For tests: the memory attribute the calling CPU's MMU translates `va` with, as
// mapping_attribute names it, or null if the translation faults. AArch64: AT S1E1R and PAR_EL1
// (what the address translation hardware uses, TLB entries included). Errors: kNotSupported
// (x86-64 and RISC-V have no instruction that reports a translation's memory type).
Result<const char*> translated_attribute(const void* va);

// For tests and reports: page-table pages currently spent on splitting large direct-map leaves so
// that some pages can be mapped uncached (KernelDmaOp::set_memory_attribute; 0 once every such
// page is cacheable again, when the large leaves are put back).
size_t direct_map_split_tables();

// Memory-type changes with every CPU running. Where changing a direct-map entry needs
// break-before-make (AArch64: the entry is invalid for a moment), splitting a 2 MiB / 1 GiB leaf
// at run time would unmap the whole leaf while other CPUs may use it; so the kernel splits the
// direct map over the RAM alloc_coherent may remap down to 4 KiB pages once at boot, and later
// changes break only the caller's own pages. Where a live entry may be changed in place, with TLB
// invalidation on every CPU (x86-64, RISC-V), nothing is split ahead: both return 0.
//
// Bytes of page tables that splitting the direct map over `ram` to 4 KiB pages takes (one table
// per 2 MiB and per 1 GiB region touched), page aligned; 0 where nothing is split ahead.
uint64_t direct_map_split_bytes(support::Span<const PhysRange> ram);
// Splits the direct map over `ram` to 4 KiB pages for good, with page tables from `tables` (RAM
// carved for it, direct_map_split_bytes(ram) long, 2 MiB aligned, never given back). Call on
// the boot CPU after create_dma_op, before any other CPU starts and before interrupts are on.
// Returns the page-table pages used (0 where nothing is split ahead). Errors:
// AArch64DmaOp::split_direct_map's; kNoMemory (tables too small, or no identity mapping for them).
Result<size_t> split_direct_map_at_boot(support::Span<const PhysRange> ram, PhysRange tables);

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

// irq_save / irq_restore: see the interrupt section below.

// The architecture's spin-wait hint (yield, pause), plus whatever this CPU owes CPUs that wait
// for it with interrupts masked (x86-64: a pending TLB shootdown). Any context.
void cpu_relax();

// Waits until an interrupt is pending on the calling secondary CPU: a low-power wait that
// wake_cpu's interrupt (or the CPU's own timer tick) ends (x86-64 hlt and an IPI, RISC-V wfi and
// an SBI IPI, AArch64 wfi and an SGI). Called with interrupts masked, from secondary_main only;
// returns with them masked (x86-64 takes the interrupt inside, the others when the caller
// unmasks).
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

// ---------------------------------------------------------------------------------------------
// Interrupts: the controller, message-signalled interrupts for PCI devices, a per-CPU timer.
//
// AArch64: GICv3 with MSIs as LPIs through its ITS, or GICv2 with MSIs through a GICv2m frame,
// whichever the device tree describes; RISC-V: AIA, MSIs through the hart's IMSIC supervisor file
// (the APLIC and its wired sources stay off); x86-64: local APIC (x2APIC mode when available; the
// I/O APICs' pins and the 8259s all masked), MSIs straight to the local APIC. The periodic timer:
// the EL1 virtual timer, SBI set_timer, the LAPIC timer. irq_controller() says what was found.
//
// Handlers run in interrupt context on the CPU the interrupt was steered to, with interrupts
// masked on that CPU (no nesting). A handler must not block or wait for another interrupt. The
// controller's end-of-interrupt is signalled by the arch after the handler returns, so an
// edge-triggered source (every MSI is one) that fires again meanwhile is not lost.

// An interrupt handler and its argument.
using IrqHandler = void (*)(void* ctx);

// What a device writes to signal an MSI: `data` (32 bits; MSI capabilities take the low 16) at
// bus address `address`.
struct MsiMessage {
  uint64_t address = 0;
  uint32_t data = 0;
};

// Finds and initialises the interrupt controller for the boot CPU (device tree or ACPI MADT),
// masks every source, and installs the external-interrupt path. Leaves interrupts masked on the
// CPU. Call once, on the boot CPU, from thread context, after kernel_main set up memory (it may
// map controller registers). Errors: kNotFound (no supported controller described),
// kNotSupported (a controller this port does not drive), arch::mmio_map's errors.
Result<void> irq_init();

// One line naming the controller and the MSI mechanism (e.g. "gicv3 + gicv2m (msi spis 64)"),
// for the boot report. Valid after irq_init.
const char* irq_controller();

// Unmask / mask interrupts on the calling CPU. Any context.
void irq_enable_local();
void irq_disable_local();
// Masks interrupts on the calling CPU and returns the previous state for irq_restore (nesting
// allowed). Any context; the shape dmakit_kernel_hooks::irq_save/irq_restore expects.
uintptr_t irq_save();
void irq_restore(uintptr_t state);
// Whether interrupts are unmasked on the calling CPU.
bool irq_enabled_local();
// Waits with interrupts unmasked until any interrupt has been taken (or a short while passes),
// then restores the caller's interrupt state. For polling loops that wait on interrupt handlers.
void irq_wait();

// Allocates one MSI for a device: `handler(ctx)` runs when the device writes the returned message,
// on CPU `cpu` (0 is the boot CPU; this port routes every MSI to the CPU given). `requester_id` is
// the device's PCI requester ID (bus << 8 | device << 3 | function): an MSI controller that tells
// devices apart by it (the GICv3 ITS) maps it; the others ignore it. The caller programs the
// message into the device (drivers/pci/pci_msi.h) and frees it with msi_free once the device can
// no longer send it. Thread context.
// Errors: kInvalidArgument (null handler, cpu out of range, irq_init not done), kNoMemory (no
// free vector / MSI interrupt left, or no memory for the controller's tables), kNotSupported (no
// MSI controller, or a requester ID / CPU it cannot map).
Result<MsiMessage> msi_alloc(IrqHandler handler, void* ctx, unsigned cpu, uint32_t requester_id);
// Releases a message returned by msi_alloc; a later interrupt from it is ignored (counted as
// spurious). Precondition: the device no longer sends it. Errors: kNotFound (not an allocated
// message). Thread context.
Result<void> msi_free(const MsiMessage& msg);

// Interrupts taken (timer, MSIs, everything dispatched) and spurious ones (no handler) on all
// CPUs since boot; for reports and tests.
uint64_t irq_count();
uint64_t irq_spurious_count();

// Starts (or restarts with new settings) the calling CPU's periodic timer: every `period_ns`
// nanoseconds (at least 100 us) the timer interrupt runs `tick(ctx)` on this CPU (null: only
// counted). Each CPU calls it for itself (the SMP bring-up does so on every secondary). Thread
// context or interrupts off. Errors: kInvalidArgument (period below 100 us or above 1 s),
// kNotSupported (irq_init not done).
Result<void> timer_start_this_cpu(uint64_t period_ns, IrqHandler tick, void* ctx);
// Stops the calling CPU's timer (no tick arrives after it returns). Any context.
void timer_stop_this_cpu();
// Timer interrupts taken on the calling CPU since boot.
uint64_t timer_ticks_this_cpu();

// The period kernel_main starts the boot CPU's timer with (counting only), and the one a test
// that installs its own tick function restores afterwards.
constexpr uint64_t kDefaultTimerPeriodNs = 1'000'000;

}  // namespace arch

// Entered by each architecture's boot code once the MMU, traps and console are up, on the boot
// CPU, with interrupts masked. Never returns.
extern "C" [[noreturn]] void kernel_main(const arch::BootInfo& info);
