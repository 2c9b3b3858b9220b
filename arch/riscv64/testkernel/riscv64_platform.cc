// Boot of the RISC-V 64 test kernel after boot.S: device tree, page table, console, finisher,
// time, cache-block probing, BootInfo; see riscv64_platform.h for the memory layout.
#include "arch/riscv64/testkernel/riscv64_platform.h"

#include "arch/riscv64/testkernel/csr.h"
#include "arch/riscv64/testkernel/sbi.h"
#include "arch/riscv64/testkernel/trap.h"
#include "dmakit/support/bitops.h"
#include "testkernel/fdt_boot_info.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

// Linker-script symbols (virtual addresses in the direct map).
extern "C" char __kernel_start[];    // NOLINT: linker-script symbol.
extern "C" char __kernel_end[];      // NOLINT: linker-script symbol.
extern "C" char boot_stack_guard[];  // NOLINT: boot.S symbol, the page below the boot stack.

namespace riscv {

namespace {

// QEMU virt's fixed addresses, used only until the device tree has been read (the boot page
// table maps physical 0..1 GiB at the direct-map offset for them).
constexpr uint64_t kDefaultUartPhys = 0x1000'0000;
constexpr uint64_t kDefaultFinisherPhys = 0x10'0000;
// SiFive test finisher commands (QEMU hw/misc/sifive_test.c): pass, or fail with a code in the
// upper 16 bits, which becomes QEMU's exit status.
constexpr uint32_t kFinisherPass = 0x5555;
constexpr uint32_t kFinisherFail = 0x3333;
constexpr uint32_t kFailExitCode = 1;

constexpr uint64_t kPage = Sv39PageTable::kPageSize;
constexpr uint64_t kGiB = 1ull << 30;

constinit Riscv64Platform g_platform;
Sv39PageTable::TablePage g_table_pool[Riscv64Platform::kTablePoolPages];
// Scratch block for the cache-block probes (its contents are never used).
alignas(4096) uint8_t g_probe_block[4096];

uint64_t kernel_phys(const void* va) {
  return reinterpret_cast<uintptr_t>(va) - Riscv64Platform::kDirectMapOffset;
}

// The range covering whole pages around `r`.
PhysRange page_cover(PhysRange r) {
  uint64_t base = support::align_down(r.base.value(), kPage);
  uint64_t end = support::align_up(r.base.value() + r.size, kPage);
  return PhysRange{PhysAddr(base), end - base};
}

const char* code_name(Error e) {
  return error_code_name(e.code);
}

}  // namespace

Riscv64Platform& platform() {
  return g_platform;
}

void Riscv64Platform::boot(uint64_t hartid, uint64_t dtb_phys) {
  smp_init_boot_cpu(hartid);
  boot_ticks_ = read_time();
  hartid_ = hartid;
  uart_.init(kDirectMapOffset + kDefaultUartPhys, 0);
  finisher_va_ = kDirectMapOffset + kDefaultFinisherPhys;

  // The boot page table maps the gigabyte holding the blob's start; the blob must not leave it.
  const void* blob = reinterpret_cast<const void*>(dtb_phys + kDirectMapOffset);
  uint32_t dtb_size = Fdt::peek_total_size(blob);
  if (dtb_size == 0) {
    kpanic("riscv64: no device tree at physical 0x%llx (a1 from OpenSBI)",
           static_cast<unsigned long long>(dtb_phys));
  }
  if (dtb_phys / kGiB != (dtb_phys + dtb_size - 1) / kGiB) {
    kpanic("riscv64: device tree at 0x%llx (%u bytes) crosses a 1 GiB boundary",
           static_cast<unsigned long long>(dtb_phys), dtb_size);
  }
  auto fdt = Fdt::from(blob);
  if (!fdt.ok()) {
    kpanic("riscv64: invalid device tree at physical 0x%llx: %s",
           static_cast<unsigned long long>(dtb_phys), code_name(fdt.error()));
  }
  fdt_ = *fdt;

  read_cpu_features();
  find_devices();
  fill_boot_info(dtb_phys);
  build_page_table();
  write_satp(page_table_.satp());
  // Now at the device tree's UART, through the final table.
  uart_.init(kDirectMapOffset + uart_regs_.base.value(), uart_reg_shift_);
  finisher_va_ = finisher_regs_.size != 0 ? kDirectMapOffset + finisher_regs_.base.value() : 0;
  probe_cache_ops();
  print_summary();
  kernel_main(info_);
}

void Riscv64Platform::read_cpu_features() {
  FdtNode cpus = fdt_.find_path("/cpus");
  if (!cpus.valid()) kpanic("riscv64: device tree has no /cpus node");
  FdtNode boot_cpu;
  for (unsigned i = 0; i < fdt_.cpu_count(); ++i) {
    FdtNode c = fdt_.cpu_node(i);
    auto r = fdt_.reg(c, 0);
    if (r.ok() && r->base.value() == hartid_) boot_cpu = c;
  }
  if (!boot_cpu.valid()) {
    kpanic("riscv64: boot hart %llu has no enabled cpu node in the device tree",
           static_cast<unsigned long long>(hartid_));
  }
  // timebase-frequency normally sits in /cpus; a cpu node may carry its own.
  auto cpu_tb = fdt_.prop_u32(boot_cpu, "timebase-frequency");
  auto cpus_tb = fdt_.prop_u32(cpus, "timebase-frequency");
  timebase_hz_ = cpu_tb.ok() ? *cpu_tb : cpus_tb.ok() ? *cpus_tb : 0;
  if (timebase_hz_ == 0) kpanic("riscv64: no timebase-frequency in /cpus");

  isa_ = fdt_.riscv_isa(boot_cpu);
  // Every hart must have an extension for the kernel to rely on it (any hart may run DMA code
  // once secondaries are started).
  svpbmt_ = fdt_.riscv_all_cpus_have("svpbmt");
  zicbom_in_isa_ = fdt_.riscv_all_cpus_have("zicbom");
  cache_ops_ = Riscv64DmaOp::CacheOps{};
  auto bs = fdt_.riscv_cbom_block_size();
  if (bs.ok()) cache_ops_.block_size = *bs;
  if (zicbom_in_isa_) {
    if (!bs.ok()) {
      kpanic("riscv64: Zicbom in the ISA string but no riscv,cbom-block-size in the device tree");
    }
    if (!support::is_pow2(*bs) || *bs < 16 || *bs > 4096) {
      kpanic("riscv64: unusable riscv,cbom-block-size %u", *bs);
    }
  }
}

void Riscv64Platform::find_devices() {
  // The console: /chosen stdout-path ("/soc/serial@10000000" or with ":115200" options), else
  // the first NS16550A.
  FdtNode uart;
  if (const char* sp = fdt_.stdout_path(); sp != nullptr) {
    char path[128];
    size_t n = 0;
    while (sp[n] != '\0' && sp[n] != ':' && n + 1 < sizeof(path)) {
      path[n] = sp[n];
      ++n;
    }
    path[n] = '\0';
    uart = fdt_.find_path(path);
    if (uart.valid() && !fdt_.is_compatible(uart, "ns16550a")) uart = FdtNode{};
  }
  if (!uart.valid()) uart = fdt_.find_compatible("ns16550a");
  auto ur = fdt_.reg(uart, 0);
  if (!ur.ok()) kpanic("riscv64: no NS16550A UART in the device tree");
  uart_regs_ = *ur;
  auto shift = fdt_.prop_u32(uart, "reg-shift");
  uart_reg_shift_ = shift.ok() ? *shift : 0;

  FdtNode test = fdt_.find_compatible("sifive,test0");
  if (!test.valid()) test = fdt_.find_compatible("sifive,test1");
  auto tr = fdt_.reg(test, 0);
  // Without a finisher exit falls back to SBI system reset (which QEMU reports as success).
  finisher_regs_ = tr.ok() ? *tr : PhysRange{};
}

void Riscv64Platform::map_or_panic(PhysAddr pa, uint64_t size, MemType type, const char* what) {
  PhysRange r = page_cover(PhysRange{pa, size});
  if (r.size == 0) return;
  if (r.base.value() + r.size > kDirectMapSpan || r.base.value() + r.size < r.base.value()) {
    kpanic("riscv64: %s [0x%llx, 0x%llx) lies beyond the 256 GiB Sv39 direct map", what,
           static_cast<unsigned long long>(r.base.value()),
           static_cast<unsigned long long>(r.base.value() + r.size));
  }
  auto m = page_table_.map(r.base.value() + kDirectMapOffset, r.base, r.size, type);
  if (!m.ok()) {
    kpanic("riscv64: cannot map %s [0x%llx, 0x%llx): %s", what,
           static_cast<unsigned long long>(r.base.value()),
           static_cast<unsigned long long>(r.base.value() + r.size), code_name(m.error()));
  }
}

size_t Riscv64Platform::collect_holes(PhysRange* holes) const {
  size_t n = 0;
  // The boot stack's guard page (inside the kernel image, so nobody else owns it).
  holes[n++] = PhysRange{PhysAddr(kernel_phys(boot_stack_guard)), kPage};
  // Reserved memory marked "no-map": the OS must not map it as part of its map of RAM (Devicetree
  // specification, 3.5.4). OpenSBI's own regions are such: PMP denies S-mode any access.
  FdtNode rm = fdt_.find_path("/reserved-memory");
  for (FdtNode c = fdt_.first_child(rm); c.valid(); c = fdt_.next_sibling(c)) {
    if (!fdt_.is_enabled(c) || !fdt_.has_prop(c, "no-map")) continue;
    auto count = fdt_.reg_count(c);
    for (size_t i = 0; count.ok() && i < *count; ++i) {
      auto r = fdt_.reg(c, i);
      if (!r.ok() || r->size == 0) continue;
      if (n == kMaxHoles) kpanic("riscv64: more than %zu no-map reserved ranges", kMaxHoles - 1);
      holes[n++] = page_cover(*r);
    }
  }
  // Sorted by base (insertion sort: a handful of entries).
  for (size_t i = 1; i < n; ++i) {
    for (size_t j = i; j > 0 && holes[j].base < holes[j - 1].base; --j) {
      PhysRange t = holes[j];
      holes[j] = holes[j - 1];
      holes[j - 1] = t;
    }
  }
  return n;
}

void Riscv64Platform::build_page_table() {
  page_table_.init(g_table_pool, kTablePoolPages, kDirectMapOffset, svpbmt_);
  uint64_t lowest_ram = ~0ull;
  // All RAM except the holes, each gap with the largest leaves its alignment allows.
  PhysRange holes[kMaxHoles];
  size_t num_holes = collect_holes(holes);
  for (size_t i = 0; i < info_.num_ram; ++i) {
    PhysRange r = page_cover(info_.ram[i]);
    uint64_t cursor = r.base.value();
    uint64_t end = cursor + r.size;
    for (size_t h = 0; h < num_holes && cursor < end; ++h) {
      uint64_t hb = holes[h].base.value();
      uint64_t he = hb + holes[h].size;
      if (he <= cursor || hb >= end) continue;
      if (hb > cursor) map_or_panic(PhysAddr(cursor), hb - cursor, MemType::kPma, "RAM");
      cursor = support::min(he, end);
    }
    if (cursor < end) map_or_panic(PhysAddr(cursor), end - cursor, MemType::kPma, "RAM");
    lowest_ram = support::min(lowest_ram, r.base.value());
  }
  // The generic device window: everything below the gigabyte that holds the start of RAM.
  uint64_t window = support::align_down(lowest_ram, kGiB);
  if (window != 0) map_or_panic(PhysAddr(0), window, MemType::kIo, "device window");
  map_or_panic(uart_regs_.base, uart_regs_.size, MemType::kIo, "UART");
  if (finisher_regs_.size != 0) {
    map_or_panic(finisher_regs_.base, finisher_regs_.size, MemType::kIo, "test finisher");
  }
  // PCIe host bridges: the ECAM and every window of "ranges" (child address: 3 cells; parent
  // address: the parent's #address-cells; size: the bridge's #size-cells).
  for (FdtNode pci = fdt_.find_compatible("pci-host-ecam-generic"); pci.valid();
       pci = fdt_.find_compatible("pci-host-ecam-generic", pci)) {
    if (!fdt_.is_enabled(pci)) continue;
    auto ecam = fdt_.reg(pci, 0);
    if (ecam.ok()) map_or_panic(ecam->base, ecam->size, MemType::kIo, "PCIe ECAM");
    FdtProp ranges = fdt_.prop(pci, "ranges");
    uint32_t child_cells = fdt_.address_cells(pci);
    uint32_t parent_cells = fdt_.address_cells(fdt_.parent(pci));
    uint32_t size_cells = fdt_.size_cells(pci);
    uint32_t entry = 4 * (child_cells + parent_cells + size_cells);
    if (!ranges.found() || parent_cells > 2 || size_cells > 2 || entry == 0) continue;
    for (uint32_t off = 0; off + entry <= ranges.len; off += entry) {
      const uint8_t* e = ranges.data + off;
      uint64_t parent = Fdt::read_cells(e + 4 * child_cells, parent_cells);
      uint64_t size = Fdt::read_cells(e + 4 * (child_cells + parent_cells), size_cells);
      map_or_panic(PhysAddr(parent), size, MemType::kIo, "PCIe window");
    }
  }
}

void Riscv64Platform::fill_boot_info(uint64_t dtb_phys) {
  // RAM, /memreserve/, /reserved-memory (OpenSBI's own region is there), the blob, bootargs.
  auto r = boot_info_from_fdt(fdt_, PhysAddr(dtb_phys), &info_);
  if (!r.ok()) kpanic("riscv64: memory from the device tree: %s", code_name(r.error()));
  // The image includes .bss: stacks, the boot and kernel page tables.
  uint64_t kstart = kernel_phys(__kernel_start);
  r = boot_info_add_reserved(&info_, PhysAddr(kstart), kernel_phys(__kernel_end) - kstart);
  if (!r.ok()) kpanic("riscv64: reserving the kernel image: %s", code_name(r.error()));
  info_.direct_map_offset = kDirectMapOffset;
}

void Riscv64Platform::probe_cache_ops() {
  cache_ops_.zicbom = false;
  cache_ops_.inval_usable = false;
  cache_ops_.svpbmt = svpbmt_;
  const char* note;
  if (!zicbom_in_isa_) {
    note = "not in the ISA string; DMA declared coherent, cache ops only fence";
  } else if (cbo_traps(CboProbe::kClean, g_probe_block) ||
             cbo_traps(CboProbe::kFlush, g_probe_block)) {
    // The firmware left menvcfg.CBCFE off: nothing can be written back from S-mode.
    note = "cbo.clean/cbo.flush trap (menvcfg.CBCFE off); DMA declared coherent";
  } else {
    cache_ops_.zicbom = true;
    // OpenSBI sets menvcfg.CBIE for S-mode when the hart has Zicbom; if a firmware does not,
    // cbo.inval traps and invalidate falls back to cbo.flush (see riscv64_dma_op.h).
    cache_ops_.inval_usable = !cbo_traps(CboProbe::kInval, g_probe_block);
    note = cache_ops_.inval_usable
               ? "cbo.clean/cbo.inval/cbo.flush"
               : "cbo.inval traps (menvcfg.CBIE off): invalidate uses cbo.flush";
  }
  if (cache_ops_.zicbom) {
    ksnprintf(cache_features_, sizeof(cache_features_), "zicbom block %u (%s)",
              cache_ops_.block_size, note);
  } else {
    ksnprintf(cache_features_, sizeof(cache_features_), "no zicbom: %s", note);
  }
}

void Riscv64Platform::print_summary() const {
  uint64_t v = sbi::spec_version();
  unsigned stopped = 0;
  unsigned started = 0;
  for (unsigned i = 0; i < info_.num_cpus; ++i) {
    auto r = fdt_.reg(fdt_.cpu_node(i), 0);
    if (!r.ok()) continue;
    long s = sbi::hart_status(r->base.value());
    if (s == sbi::kHartStopped) ++stopped;
    if (s == sbi::kHartStarted) ++started;
  }
  kprintf(
      "riscv64: OpenSBI, SBI v%llu.%llu; boot hart %llu; %u harts in the device tree "
      "(%u started, %u stopped in SBI HSM)\n",
      static_cast<unsigned long long>(v >> 24), static_cast<unsigned long long>(v & 0xFFFFFF),
      static_cast<unsigned long long>(hartid_), info_.num_cpus, started, stopped);
  // The full ISA string runs to hundreds of characters on QEMU; the base and what matters here.
  char base[24] = "?";
  const char* more = "";
  if (isa_ != nullptr) {
    size_t n = 0;
    while (isa_[n] != '\0' && isa_[n] != '_' && n + 1 < sizeof(base)) {
      base[n] = isa_[n];
      ++n;
    }
    base[n] = '\0';
    if (isa_[n] != '\0') more = "_...";
  }
  kprintf("riscv64: isa %s%s; Svpbmt %s; %s\n", base, more,
          svpbmt_ ? "yes (MMIO mapped PBMT=IO, coherent DMA memory of non-coherent devices NC)"
                  : "no (PBMT=0 everywhere; DMA declared coherent: no uncached memory)",
          cache_features_);
  kprintf(
      "riscv64: Sv39, direct map at 0x%llx (RAM and devices), %zu page-table pages; "
      "timebase %llu Hz\n",
      static_cast<unsigned long long>(kDirectMapOffset), page_table_.pages_used(),
      static_cast<unsigned long long>(timebase_hz_));
}

void Riscv64Platform::exit(bool success) {
  if (finisher_va_ != 0) {
    uint32_t cmd = success ? kFinisherPass : ((kFailExitCode << 16) | kFinisherFail);
    *reinterpret_cast<volatile uint32_t*>(finisher_va_) = cmd;
  }
  // No finisher (or it did not stop the machine): ask the firmware.
  sbi::system_shutdown(!success);
  for (;;) wfi();
}

uint64_t Riscv64Platform::now_ns() const {
  if (timebase_hz_ == 0) return 0;
  uint64_t ticks = read_time() - boot_ticks_;
  constexpr uint64_t kNsPerSec = 1'000'000'000;
  return (ticks / timebase_hz_) * kNsPerSec + (ticks % timebase_hz_) * kNsPerSec / timebase_hz_;
}

Result<volatile void*> Riscv64Platform::mmio_map(PhysAddr base, uint64_t size) {
  uint64_t b = base.value();
  if (size == 0 || b + size < b) return ErrorCode::kInvalidArgument;
  PhysRange r = page_cover(PhysRange{base, size});
  if (r.base.value() + r.size > kDirectMapSpan || r.base.value() + r.size < r.base.value()) {
    return ErrorCode::kNotSupported;
  }
  // Never RAM (including its unmapped holes): a device mapping there would alias normal memory.
  for (size_t i = 0; i < info_.num_ram; ++i) {
    const PhysRange& ram = info_.ram[i];
    if (r.base < ram.end() && ram.base < r.end()) return ErrorCode::kInvalidArgument;
  }
  TRY(page_table_.map(r.base.value() + kDirectMapOffset, r.base, r.size, MemType::kIo));
  sfence_vma_all();
  return reinterpret_cast<volatile void*>(b + kDirectMapOffset);
}

const char* Riscv64Platform::mapping_attribute(const void* va) const {
  auto leaf = Sv39PageTable::walk_active(reinterpret_cast<uintptr_t>(va), kDirectMapOffset);
  if (!leaf.ok()) return nullptr;
  return mem_type_name(leaf->type());
}

}  // namespace riscv

extern "C" [[noreturn]] void riscv64_boot(uint64_t hartid, uint64_t dtb_phys) {
  riscv::platform().boot(hartid, dtb_phys);
}
