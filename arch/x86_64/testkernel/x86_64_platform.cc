// The x86-64 platform: the boot sequence after boot.S (x86_64_main) and the arch::* contract
// (testkernel/arch.h) for QEMU q35.
//
// Boot order: console, GDT/IDT (so every later fault is reported), CPUID, the PVH start info
// (read through the boot identity map), PAT, final page tables (the identity map goes away),
// TSC clock, ACPI CPU count, then kernel_main with a BootInfo whose RAM comes only from the PVH
// memory map (type 1) and whose reserved list names everything the allocator must not touch.
#include "arch/x86_64/testkernel/x86_64_platform.h"

#include "arch/x86_64/testkernel/acpi.h"
#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/cpu_features.h"
#include "arch/x86_64/testkernel/lapic.h"
#include "arch/x86_64/testkernel/paging.h"
#include "arch/x86_64/testkernel/pvh.h"
#include "arch/x86_64/testkernel/serial.h"
#include "arch/x86_64/testkernel/traps.h"
#include "arch/x86_64/testkernel/tsc_clock.h"
#include "dmakit/arch/x86_64_dma_op.h"
#include "dmakit/support/utility.h"
#include "testkernel/arch.h"
#include "testkernel/percpu.h"

extern "C" char __kernel_start[], __kernel_end[];

namespace x86 {
namespace {

// isa-debug-exit (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`): a write of v makes
// QEMU exit with status (v << 1) | 1. The runner (tests/qemu/run_qemu.py) maps 1 to success and
// 3 to failure.
constexpr uint16_t kDebugExitPort = 0xF4;
constexpr uint32_t kExitSuccess = 0;  // QEMU status 1.
constexpr uint32_t kExitFailure = 1;  // QEMU status 3.

constexpr uint64_t kLowMemEnd = 1ull << 20;

PvhInfo g_pvh;
arch::BootInfo g_boot;
char g_cache_features[64];
alignas(X86DmaOp) unsigned char g_dma_op_storage[sizeof(X86DmaOp)];
bool g_dma_op_created = false;

void add_reserved(uint64_t base, uint64_t size) {
  if (size == 0) return;
  if (g_boot.num_reserved == arch::kMaxReserved) boot_panic("too many reserved ranges");
  g_boot.reserved[g_boot.num_reserved++] = PhysRange{PhysAddr(base), size};
}

void fill_boot_info() {
  for (size_t i = 0; i < g_pvh.num_memmap; ++i) {
    const MemmapEntry& m = g_pvh.memmap[i];
    if (m.type != kMemTypeRam || m.size == 0) continue;
    if (g_boot.num_ram == arch::kMaxMemRanges) boot_panic("more RAM ranges than kMaxMemRanges");
    g_boot.ram[g_boot.num_ram++] = PhysRange{PhysAddr(m.addr), m.size};
  }
  if (g_boot.num_ram == 0) boot_panic("the PVH memory map has no RAM");

  // Legacy low memory (real-mode IVT, BDA, EBDA, VGA, option ROMs and the firmware's PVH data).
  add_reserved(0, kLowMemEnd);
  // The kernel image, which holds the page tables and the boot and trap stacks.
  const uint64_t image = kernel_virt_to_phys(__kernel_start);
  add_reserved(image, kernel_virt_to_phys(__kernel_end) - image);
  // The firmware's PVH data (below 1 MiB on QEMU, but nothing guarantees it).
  add_reserved(g_pvh.start_info_phys, 56);
  add_reserved(g_pvh.memmap_phys, g_pvh.num_memmap * sizeof(MemmapEntry));
  if (g_pvh.cmdline_phys != 0) add_reserved(g_pvh.cmdline_phys, g_pvh.cmdline_len + 1);

  g_boot.fdt = nullptr;
  g_boot.cmdline =
      g_pvh.cmdline_phys != 0 ? static_cast<const char*>(direct_map(g_pvh.cmdline_phys)) : "";
  g_boot.direct_map_offset = kDirectMapBase;
  const unsigned cpus = acpi_count_cpus(g_pvh.rsdp_phys);
  g_boot.num_cpus = cpus != 0 ? cpus : 1;
}

void append(char* dst, size_t cap, size_t* len, const char* s) {
  while (*s != '\0' && *len + 1 < cap) dst[(*len)++] = *s++;
  dst[*len] = '\0';
}

void describe_cache_features() {
  const CpuFeatures& f = cpu_features();
  size_t n = 0;
  const size_t cap = sizeof(g_cache_features);
  append(g_cache_features, cap, &n, "clflush");
  if (f.clflushopt) append(g_cache_features, cap, &n, " clflushopt");
  if (f.clwb) append(g_cache_features, cap, &n, " clwb");
  append(g_cache_features, cap, &n, " line ");
  char num[8];
  int k = 0;
  for (uint32_t v = f.clflush_line; v != 0 && k < 7; v /= 10)
    num[k++] = static_cast<char>('0' + v % 10);
  while (k > 0) {
    const char c[2] = {num[--k], '\0'};
    append(g_cache_features, cap, &n, c);
  }
}

// One line of what only the arch knows, before kernel_main's report.
void print_boot_line() {
  const CpuFeatures& f = cpu_features();
  serial_puts("\nx86_64: q35 PVH boot (start info v");
  serial_dec(g_pvh.version);
  serial_puts(", ");
  serial_dec(g_pvh.num_memmap);
  serial_puts(" memory-map entries); cpu ");
  serial_puts(f.vendor);
  serial_puts("; tsc ");
  serial_dec(tsc_hz() / 1'000'000);
  serial_puts(" MHz from ");
  serial_puts(tsc_source());
  serial_puts("; page tables: ");
  serial_dec(page_table_pages_used());
  serial_puts(" pages, ");
  serial_puts(f.page_1g ? "1 GiB" : "2 MiB");
  serial_puts(" direct-map pages, nx ");
  serial_puts(f.nx ? "on" : "off");
  serial_puts("\n");
}

}  // namespace

const PvhInfo& pvh_info() {
  return g_pvh;
}

}  // namespace x86

using namespace x86;

// Entered from boot.S on the boot CPU: long mode, boot page tables, interrupts off.
extern "C" [[noreturn]] void x86_64_main(uint32_t start_info_phys) {
  serial_init();
  init_traps();
  // After init_traps, whose segment loads may clear the GS base. The initial APIC id from CPUID
  // leaf 1 is the boot CPU's hardware id (the local APIC is mapped only later).
  smp_init_boot_cpu(cpuid(1).ebx >> 24);
  detect_cpu_features();
  if (!cpu_features().clflush) boot_panic("CPU without CLFLUSH");
  if (!cpu_features().pat) boot_panic("CPU without PAT");
  read_pvh_start_info(start_info_phys, &g_pvh);
  init_pat();
  init_paging(g_pvh);
  if (!lapic::init_this_cpu()) boot_panic("no usable local APIC");
  init_tsc_clock();
  describe_cache_features();
  fill_boot_info();
  print_boot_line();
  kernel_main(g_boot);
}

namespace arch {

void exit_qemu(bool success) {
  outl(kDebugExitPort, success ? kExitSuccess : kExitFailure);
  // Only reached without an isa-debug-exit device: stop here; the runner's timeout reports it.
  halt_forever();
}

uint64_t now_ns() {
  return tsc_now_ns();
}

KernelDmaOp& create_dma_op(const KernelDmaOp::Config& cfg) {
  if (g_dma_op_created) boot_panic("create_dma_op called twice");
  g_dma_op_created = true;
  KernelDmaOp::Config c = cfg;
  c.platform_coherent = true;  // x86 DMA snoops the CPU caches.
  const CpuFeatures& f = cpu_features();
  const auto flush = f.clwb         ? X86DmaOp::FlushInsn::kClwb
                     : f.clflushopt ? X86DmaOp::FlushInsn::kClflushopt
                                    : X86DmaOp::FlushInsn::kClflush;
  const auto inval =
      f.clflushopt ? X86DmaOp::InvalInsn::kClflushopt : X86DmaOp::InvalInsn::kClflush;
  return *new (g_dma_op_storage)
      X86DmaOp(c, f.clflush_line, flush, inval, x86::direct_map_tables());
}

size_t cache_line_size() {
  return cpu_features().clflush_line;
}

const char* cache_features() {
  return g_cache_features;
}

const char* mapping_attribute(const void* va) {
  Translation t;
  if (!translate(va, &t)) return nullptr;
  return mem_type_name(t.type);
}

}  // namespace arch
