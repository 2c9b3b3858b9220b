// The arch:: contract (testkernel/arch.h) for AArch64 QEMU virt: PL011 console, semihosting exit,
// generic-timer clock, the AArch64DmaOp, and page-table queries.
#include "arch/aarch64/testkernel/platform.h"
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "dmakit/arch/aarch64_dma_op.h"
#include "dmakit/support/bitops.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"

namespace {

// PL011 registers (byte offsets).
constexpr uint64_t kUartDr = 0x00;
constexpr uint64_t kUartFr = 0x18;
constexpr uint64_t kUartLcrH = 0x2c;
constexpr uint64_t kUartCr = 0x30;
constexpr uint32_t kUartLcrH8N1Fifo = (3u << 5) | (1u << 4);           // WLEN = 8 bits, FEN.
constexpr uint32_t kUartCrEnable = (1u << 0) | (1u << 8) | (1u << 9);  // UARTEN, TXE, RXE.
constexpr uint32_t kUartFrTxff = 1u << 5;                              // Transmit FIFO full.

// Semihosting (Arm "Semihosting for AArch32 and AArch64"): SYS_EXIT with the extended
// parameter block {reason, subcode}; QEMU exits with status `subcode` for
// ADP_Stopped_ApplicationExit.
constexpr uint64_t kSysExit = 0x18;
constexpr uint64_t kAdpStoppedApplicationExit = 0x20026;

alignas(AArch64DmaOp) unsigned char g_dma_op_storage[sizeof(AArch64DmaOp)];
AArch64DmaOp* g_dma_op = nullptr;
char g_features[96];
int g_exiting = 0;

volatile uint32_t* uart_reg(uint64_t off) {
  return reinterpret_cast<volatile uint32_t*>(static_cast<uintptr_t>(aarch64::kPl011Phys + off));
}

}  // namespace

namespace aarch64 {

void console_init() {
  // QEMU's PL011 needs no baud rate; it only wants UARTEN and TXE set (it logs writes to a
  // disabled UART as guest errors). Disable, set 8N1 with FIFOs, enable.
  *uart_reg(kUartCr) = 0;
  *uart_reg(kUartLcrH) = kUartLcrH8N1Fifo;
  *uart_reg(kUartCr) = kUartCrEnable;
}

}  // namespace aarch64

namespace arch {

void console_putc(char c) {
  while ((*uart_reg(kUartFr) & kUartFrTxff) != 0) {
  }
  *uart_reg(kUartDr) = static_cast<uint8_t>(c);
}

void exit_qemu(bool success) {
  // A fault inside the exit path (semihosting disabled: HLT traps) must not loop back here.
  if (__atomic_exchange_n(&g_exiting, 1, __ATOMIC_ACQ_REL) == 0) {
    uint64_t block[2] = {kAdpStoppedApplicationExit, success ? 0u : 1u};
    register uint64_t x0 __asm__("x0") = kSysExit;
    register uint64_t x1 __asm__("x1") = reinterpret_cast<uintptr_t>(block);
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
  }
  for (;;) __asm__ volatile("wfi");
}

uint64_t now_ns() {
  uint64_t freq = aarch64::read_cntfrq_el0();
  uint64_t t = aarch64::read_cntvct_el0();
  if (freq == 0) return 0;
  // Split to avoid overflowing 64 bits (and needing 128-bit division).
  return (t / freq) * 1'000'000'000ull + (t % freq) * 1'000'000'000ull / freq;
}

KernelDmaOp& create_dma_op(const KernelDmaOp::Config& cfg) {
  KernelDmaOp::Config c = cfg;
  c.platform_coherent = false;  // QEMU virt: devices are not described as dma-coherent.
  g_dma_op = new (g_dma_op_storage)
      AArch64DmaOp(c, AArch64DmaOp::hardware_line_size(), aarch64::mmu_direct_map_tables());
  return *g_dma_op;
}

size_t cache_line_size() {
  return g_dma_op != nullptr ? g_dma_op->line_size() : AArch64DmaOp::hardware_line_size();
}

const char* cache_features() {
  uint64_t ctr = aarch64::read_ctr_el0();
  ksnprintf(g_features, sizeof(g_features),
            "dc cvac/ivac/civac by VA to PoC, line %zu (CTR_EL0 0x%llx%s%s)", cache_line_size(),
            static_cast<unsigned long long>(ctr), (ctr >> 28) & 1 ? ", IDC" : "",
            (ctr >> 29) & 1 ? ", DIC" : "");
  return g_features;
}

const char* mapping_attribute(const void* va) {
  aarch64::MemAttr attr;
  uint64_t pa = 0;
  if (!aarch64::mmu_lookup(reinterpret_cast<uintptr_t>(va), &attr, &pa)) return nullptr;
  switch (attr) {
    case aarch64::MemAttr::kDevice:
      return "device-ngnre";
    case aarch64::MemAttr::kNormalWb:
      return "normal-wb";
    case aarch64::MemAttr::kNormalNc:
      return "normal-nc";
    case aarch64::MemAttr::kDeviceStrict:
      return "device-ngnrne";
  }
  return "unknown";
}

// Break-before-make (Arm ARM, "Using break-before-make when updating translation table
// entries") makes a run-time split of a 2 MiB / 1 GiB block unmap the whole block for a moment;
// so the direct map over RAM is split to pages here, once, before other CPUs run.
namespace {

constexpr uint64_t k2MiB = 1ull << 21;
constexpr uint64_t k1GiB = 1ull << 30;

uint64_t regions_touched(uint64_t lo, uint64_t hi, uint64_t region) {
  return hi <= lo ? 0 : (hi - 1) / region - lo / region + 1;
}

}  // namespace

uint64_t direct_map_split_bytes(support::Span<const PhysRange> ram) {
  uint64_t tables = 0;
  for (size_t i = 0; i < ram.size(); ++i) {
    const uint64_t lo = support::align_up(ram[i].base.value(), uint64_t{4096});
    const uint64_t hi = support::align_down(ram[i].end().value(), uint64_t{4096});
    tables += regions_touched(lo, hi, k2MiB) + regions_touched(lo, hi, k1GiB);
  }
  return tables * 4096;
}

Result<size_t> split_direct_map_at_boot(support::Span<const PhysRange> ram, PhysRange tables) {
  KASSERT(g_dma_op != nullptr, "split_direct_map_at_boot before create_dma_op");
  if (tables.size < direct_map_split_bytes(ram)) return ErrorCode::kNoMemory;
  if (tables.size == 0) return size_t{0};
  // The library reaches tables at their physical address (table_offset 0): the identity map,
  // which no split of the direct map touches.
  auto r = aarch64::mmu_map(aarch64::Space::kIdentity, tables.base.value(), tables.base.value(),
                            tables.size, aarch64::MemAttr::kNormalWb, false);
  if (!r.ok()) return ErrorCode::kNoMemory;
  aarch64::mmu_sync();
  aarch64::g_split_tables.begin_boot_split(static_cast<uintptr_t>(tables.base.value()),
                                           static_cast<size_t>(tables.size / 4096));
  Result<void> res = support::ok();
  for (size_t i = 0; i < ram.size() && res.ok(); ++i) {
    const uint64_t lo = support::align_up(ram[i].base.value(), uint64_t{4096});
    const uint64_t hi = support::align_down(ram[i].end().value(), uint64_t{4096});
    if (hi <= lo) continue;
    res = g_dma_op->split_direct_map(reinterpret_cast<void*>(aarch64::kDirectMapBase + lo),
                                     static_cast<size_t>(hi - lo));
  }
  const size_t used = aarch64::g_split_tables.end_boot_split();
  if (!res.ok()) return res.error();
  return used;
}

Result<const char*> translated_attribute(const void* va) {
  const uintptr_t state = irq_save();  // PAR_EL1 is the calling CPU's until read.
  __asm__ volatile("at s1e1r, %0\n\tisb" : : "r"(va) : "memory");
  const uint64_t par = aarch64::read_par_el1();
  irq_restore(state);
  if ((par & 1) != 0) return static_cast<const char*>(nullptr);  // PAR_EL1.F: the walk faulted.
  // PAR_EL1.ATTR: the MAIR_EL1 attribute byte the translation uses.
  switch (par >> 56) {
    case 0xFF:
      return "normal-wb";
    case 0x44:
      return "normal-nc";
    case 0x04:
      return "device-ngnre";
    case 0x00:
      return "device-ngnrne";
    default:
      return "unknown";
  }
}

}  // namespace arch
